"""The faust monitor's Kafka connection: broker URLs and credentials from the same settings as librdkafka's.

The retriever, generator and clients pass ``RAG_KAFKA__EXTRA`` straight to librdkafka
(:func:`workers.kafka.config.base_config`); faust (aiokafka) needs the same connection as URLs and credentials
objects.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import faust

from workers.contracts.errors import ConfigError


def broker_urls(bootstrap_servers: str) -> list[str]:
    """faust broker URLs (``kafka://host:port``) of a comma-separated bootstrap server list."""
    return [f"kafka://{h.strip()}" for h in bootstrap_servers.split(",") if h.strip()]


def faust_credentials(extra: Mapping[str, str]) -> Any:
    """faust/aiokafka credentials for the librdkafka security properties in ``kafka.extra``.

    The retriever, generator and clients pass ``RAG_KAFKA__EXTRA`` straight to librdkafka; the monitor's faust
    consumer (aiokafka) needs the same connection as credentials objects. Read: ``security.protocol``
    (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), ``sasl.mechanism``/``sasl.mechanisms`` (PLAIN, SCRAM-SHA-256,
    SCRAM-SHA-512, GSSAPI), ``sasl.username``, ``sasl.password``, ``sasl.kerberos.service.name``,
    ``ssl.ca.location``, ``ssl.certificate.location``, ``ssl.key.location``, ``ssl.key.password``,
    ``enable.ssl.certificate.verification``. Other keys are librdkafka tuning and do not apply to aiokafka.

    Returns:
        ``None`` for PLAINTEXT, else a ``faust.SSLCredentials``, ``faust.SASLCredentials`` or
        ``faust.GSSAPICredentials``.

    Raises:
        ConfigError: an unknown protocol or mechanism (OAUTHBEARER is not supported by the monitor), SASL
            without a username/password, or certificate files that cannot be loaded.
    """
    protocol = str(extra.get("security.protocol", "PLAINTEXT")).upper()
    if protocol not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
        raise ConfigError(
            f"kafka.extra security.protocol {protocol!r} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
        )
    if protocol == "PLAINTEXT":
        return None
    context: ssl.SSLContext | None = None
    if protocol in {"SSL", "SASL_SSL"}:
        try:
            context = ssl.create_default_context(cafile=extra.get("ssl.ca.location") or None)
            if extra.get("ssl.certificate.location"):
                context.load_cert_chain(
                    extra["ssl.certificate.location"],
                    keyfile=extra.get("ssl.key.location") or None,
                    password=extra.get("ssl.key.password") or None,
                )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"kafka.extra TLS settings cannot be loaded: {exc}") from exc
        if str(extra.get("enable.ssl.certificate.verification", "true")).lower() == "false":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = str(extra.get("sasl.mechanism") or extra.get("sasl.mechanisms") or "GSSAPI").upper()
    if mechanism == "GSSAPI":
        return faust.GSSAPICredentials(
            kerberos_service_name=extra.get("sasl.kerberos.service.name", "kafka"), ssl_context=context
        )
    if mechanism not in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}:
        raise ConfigError(f"kafka.extra sasl.mechanism {mechanism!r} is not supported by the monitor")
    username, password = extra.get("sasl.username"), extra.get("sasl.password")
    if not username or password is None:
        raise ConfigError(f"kafka.extra {mechanism} needs sasl.username and sasl.password")
    return faust.SASLCredentials(username=username, password=password, ssl_context=context, mechanism=mechanism)
