"""A ``SASL_SSL`` listener for the dev broker: throwaway TLS certificates and a SCRAM-SHA-512 user.

``ktasks dev up --sasl-ssl-port PORT`` adds a listener that clients reach the
way production clients reach a secured cluster: TLS (a CA and a broker
certificate made for this broker, by ``trustme``) and SCRAM-SHA-512 with a
user created when the storage is formatted. The PLAINTEXT listener stays, for
the broker's own controller traffic and for ``ktasks dev`` itself.

Files, in ``<state dir>/tls/``: ``ca.pem`` (what clients trust: the
``ssl_cafile`` setting) and ``broker.json`` (the broker's certificate chain
and key, PEM, written into ``server.properties`` inline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DevBrokerError

__all__ = ["SASL_MECHANISM", "SaslSsl", "client_settings"]

SASL_MECHANISM = "SCRAM-SHA-512"
LISTENER = "SASL_SSL"


@dataclass(frozen=True)
class SaslSsl:
    """The SASL_SSL listener of a dev broker."""

    port: int
    username: str = "ktasks"
    password: str = "ktasks-dev-secret"

    def format_args(self) -> tuple[str, ...]:
        """``StorageTool format`` arguments that create the SCRAM user."""
        return ("--add-scram", f"{SASL_MECHANISM}=[name={self.username},password={self.password}]")

    def properties(self, tls_dir: Path) -> dict[str, str]:
        """``server.properties`` entries for the listener (the listener itself is added by the broker)."""
        chain, key = ensure_certificates(tls_dir)
        prefix = f"listener.name.{LISTENER.lower()}"
        return {
            "sasl.enabled.mechanisms": SASL_MECHANISM,
            f"{prefix}.{SASL_MECHANISM.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}.ssl.keystore.type": "PEM",
            f"{prefix}.ssl.keystore.certificate.chain": _one_line(chain),
            f"{prefix}.ssl.keystore.key": _one_line(key),
        }


def client_settings(sasl: SaslSsl, host: str, tls_dir: Path) -> dict[str, Any]:
    """ktasks settings that reach the listener (for ``App(**settings)`` or ``KTASKS_*`` variables)."""
    return {
        "bootstrap_servers": f"{host}:{sasl.port}",
        "security_protocol": LISTENER,
        "sasl_mechanism": SASL_MECHANISM,
        "sasl_plain_username": sasl.username,
        "sasl_plain_password": sasl.password,
        "ssl_cafile": str(tls_dir / "ca.pem"),
    }


def ensure_certificates(tls_dir: Path) -> tuple[str, str]:
    """The broker's certificate chain and PKCS#8 key (PEM), made with a new CA on first use and kept."""
    stored = tls_dir / "broker.json"
    if stored.exists():
        saved = json.loads(stored.read_text())
        return saved["chain"], saved["key"]
    try:
        import trustme
        from cryptography.hazmat.primitives import serialization
    except ImportError as exc:
        raise DevBrokerError("a SASL_SSL dev broker needs the trustme package: pip install trustme") from exc
    ca = trustme.CA(organization_name="ktasks dev CA")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    # Kafka's PEM key store reads PKCS#8 only; trustme writes the traditional format.
    private_key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    key = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    chain = "".join(blob.bytes().decode() for blob in cert.cert_chain_pems)
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))
    stored.write_text(json.dumps({"chain": chain, "key": key}))
    stored.chmod(0o600)
    return chain, key


def _one_line(pem: str) -> str:
    """A PEM block as one ``server.properties`` value: newlines escaped (``Properties.load`` restores them)."""
    return pem.strip().replace("\n", "\\n")
