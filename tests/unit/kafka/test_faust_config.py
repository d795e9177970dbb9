"""The monitor's faust consumer gets the same Kafka security settings as the librdkafka clients (kafka.extra)."""

from __future__ import annotations

import faust
import pytest
from faust.types.auth import AuthProtocol, SASLMechanism

from workers.contracts.errors import ConfigError
from workers.kafka.faust_config import faust_credentials
from workers.monitor.app import create_app
from workers.settings import load_settings


def test_plaintext_needs_no_credentials() -> None:
    assert faust_credentials({}) is None
    assert faust_credentials({"security.protocol": "plaintext", "linger.ms": "5"}) is None


def test_sasl_plain_and_scram() -> None:
    plain = faust_credentials(
        {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "u", "sasl.password": "p"}
    )
    assert isinstance(plain, faust.SASLCredentials)
    assert (plain.protocol, plain.mechanism) == (AuthProtocol.SASL_PLAINTEXT, SASLMechanism.PLAIN)
    assert (plain.username, plain.password) == ("u", "p")
    scram = faust_credentials(
        {"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "u", "sasl.password": ""}
    )
    assert isinstance(scram, faust.SASLCredentials)
    assert (scram.protocol, scram.mechanism) == (AuthProtocol.SASL_SSL, SASLMechanism.SCRAM_SHA_512)
    assert scram.ssl_context is not None


def test_ssl_and_gssapi() -> None:
    tls = faust_credentials({"security.protocol": "SSL", "enable.ssl.certificate.verification": "false"})
    assert isinstance(tls, faust.SSLCredentials) and tls.protocol == AuthProtocol.SSL
    krb = faust_credentials({"security.protocol": "SASL_PLAINTEXT", "sasl.kerberos.service.name": "kfk"})
    assert isinstance(krb, faust.GSSAPICredentials) and krb.kerberos_service_name == "kfk"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"security.protocol": "TLS"}, "security.protocol"),
        ({"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}, "OAUTHBEARER"),
        ({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "u"}, "sasl.password"),
        ({"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"}, "TLS settings"),
    ],
)
def test_unusable_settings_are_a_clear_error(extra: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        faust_credentials(extra)


def test_create_app_passes_the_credentials() -> None:
    extra = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "u",
        "sasl.password": "p",
    }
    settings = load_settings(kafka={"bootstrap_servers": "127.0.0.1:1", "extra": extra})
    app = create_app(settings)
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    assert app.conf.broker_credentials.username == "u"
