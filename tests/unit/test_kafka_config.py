"""Kafka security settings: what each client library is given, and what is refused.

The broker-side proof (every client connecting over SASL_SSL and mutual TLS)
is tests/e2e/test_kafka_security.py; here the mapping itself, table-driven.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from streams.kafka_config import (
    CLIENT_LOGGER,
    KafkaSecurityError,
    check_usable,
    confluent_config,
    connection_problem,
    faust_options,
)
from streams.settings import KafkaSettings, Settings, masked, secret_values

LOGIN = {"sasl_username": "svc-conveyor", "sasl_password": "s3cret-pw"}


def _aiokafka(kafka: KafkaSettings) -> dict[str, Any]:
    """What Faust passes to aiokafka's consumer and producer for these settings."""
    credentials = faust_options(kafka).get("broker_credentials")
    auth: dict[str, Any] = credentials_to_aiokafka_auth(credentials, None)
    return auth


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    kafka = KafkaSettings()
    assert confluent_config(kafka) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
        "logger": CLIENT_LOGGER,
    }
    assert faust_options(kafka) == {}
    assert _aiokafka(kafka) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_gives_both_libraries_the_login_and_a_verifying_tls_context(
    mechanism: str,
) -> None:
    kafka = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism=mechanism, **LOGIN)
    conf = confluent_config(kafka)
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == mechanism
    assert (conf["sasl.username"], conf["sasl.password"]) == ("svc-conveyor", "s3cret-pw")
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert "ssl.ca.location" not in conf  # the system's CAs

    auth = _aiokafka(kafka)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == mechanism
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == (
        "svc-conveyor",
        "s3cret-pw",
    )
    context = auth["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_sasl_plaintext_logs_in_without_tls() -> None:
    kafka = KafkaSettings(security_protocol="SASL_PLAINTEXT", **LOGIN)
    conf = confluent_config(kafka)
    assert conf["security.protocol"] == "SASL_PLAINTEXT"
    assert not [key for key in conf if key.startswith("ssl.")]
    auth = _aiokafka(kafka)
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None


def test_ssl_with_a_ca_file(tmp_path: Path) -> None:
    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    kafka = KafkaSettings(security_protocol="SSL", ssl_ca_file=str(ca))
    conf = confluent_config(kafka)
    assert conf["ssl.ca.location"] == str(ca)
    assert not [key for key in conf if key.startswith("sasl.")]
    auth = _aiokafka(kafka)
    assert auth["security_protocol"] == "SSL"
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_client_certificate_files_reach_librdkafka(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    kafka = KafkaSettings(
        security_protocol="SSL",
        ssl_cert_file=str(cert),
        ssl_key_file=str(key),
        ssl_key_password="key-pass",
    )
    conf = confluent_config(kafka)
    assert conf["ssl.certificate.location"] == str(cert)
    assert conf["ssl.key.location"] == str(key)
    assert conf["ssl.key.password"] == "key-pass"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ssl_ca_file": "/ca.pem"}, "ssl_ca_file set, but security_protocol PLAINTEXT"),
        (
            {"security_protocol": "SSL", **LOGIN},
            "sasl_username, sasl_password set, but security_protocol SSL",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "ssl_ca_file": "/ca.pem", **LOGIN},
            "ssl_ca_file set, but security_protocol SASL_PLAINTEXT",
        ),
        ({"security_protocol": "SSL", "ssl_cert_file": "/c.pem"}, "go together"),
        ({"security_protocol": "SSL", "ssl_key_password": "x"}, "without ssl_key_file"),
    ],
)
def test_settings_a_protocol_would_not_use_are_refused(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaSettings(**settings)


def test_a_missing_login_or_file_is_one_line_when_connecting(tmp_path: Path) -> None:
    no_login = KafkaSettings(security_protocol="SASL_SSL")  # e.g. the migrate hook's settings
    with pytest.raises(KafkaSecurityError, match=r"needs kafka\.sasl_username and kafka\."):
        check_usable(no_login)
    assert "needs kafka.sasl_username" in (connection_problem(no_login) or "")
    missing = KafkaSettings(security_protocol="SSL", ssl_ca_file=str(tmp_path / "nope.pem"))
    assert connection_problem(missing) == f"kafka.ssl_ca_file {tmp_path}/nope.pem does not exist"
    with pytest.raises(KafkaSecurityError, match="does not exist"):
        faust_options(missing)


def test_the_password_is_a_secret_everywhere_the_username_only_in_config_output() -> None:
    settings = Settings(kafka=KafkaSettings(security_protocol="SASL_SSL", **LOGIN))
    shown = masked(settings)["kafka"]
    assert "svc-conveyor" not in str(shown) and "s3cret-pw" not in str(shown)
    # A username is often a plain word (the service's own name): masking it
    # would blank that word in every log line.
    assert "s3cret-pw" in secret_values(settings)
    assert "svc-conveyor" not in secret_values(settings)
