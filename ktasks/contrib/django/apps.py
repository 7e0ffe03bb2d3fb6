"""The Django application config: ``INSTALLED_APPS = [..., "ktasks.contrib.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class KtasksConfig(AppConfig):
    name = "ktasks.contrib.django"
    label = "ktasks"
    verbose_name = "ktasks outbox"
