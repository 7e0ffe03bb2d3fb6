"""Settings of the Django outbox example: PostgreSQL from DATABASE_URL (a libpq URI)."""

import os
from urllib.parse import parse_qs, unquote, urlsplit

_url = urlsplit(os.environ["DATABASE_URL"])
_query = parse_qs(_url.query)

SECRET_KEY = "example-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "shopsite.urls"
USE_TZ = True
INSTALLED_APPS = [
    "ktasks.contrib.django",  # its migration creates ktasks_outbox and ktasks_claims
    "orders",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(_url.path.lstrip("/")),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        # A unix socket folder may come as ?host=/path, as libpq allows.
        "HOST": _query.get("host", [_url.hostname or ""])[0],
        "PORT": str(_url.port or ""),
    }
}
