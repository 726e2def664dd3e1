"""Kafka connection settings → the configuration of every Kafka client the service opens.

One mapping, used by all of them, so no client connects with less security
than the others:

- the worker's Faust consumer and producer (aiokafka): :func:`faust_options`
  (``broker_credentials`` with an ``ssl.SSLContext``);
- the plain aiokafka clients of the fleet topics (control and status):
  :func:`aiokafka_options`;
- the confluent-kafka clients of the preflight and the operator commands
  (topics, lag, submit, demo, dlq replay): :func:`confluent_config`.

:func:`connection_problem` connects once before any of them is used and
turns a refused login or an untrusted certificate into one line within
seconds: librdkafka alone would retry such a failure until the command's
own timeout and print its own log lines meanwhile.

OAUTHBEARER is not offered: aiokafka needs a token provider written and
maintained here (it has no OIDC client), and the two client libraries would
fetch and refresh tokens in two different ways (docs/DEPLOYING.md, "Kafka
security").
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from streams.redact import Redactor
from streams.settings import KafkaSettings

#: librdkafka's log lines go through the standard logging (structlog in the worker).
CLIENT_LOGGER = logging.getLogger("kafka.librdkafka")
_QUIET = logging.getLogger("kafka.librdkafka.check")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

#: Errors no retry can fix: the broker refused the login, or the TLS handshake failed.
FATAL_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL})
CHECK_TIMEOUT_S = 10.0


class KafkaSecurityError(ValueError):
    """Security settings no client can connect with: missing credentials, unreadable files."""


def uses_sasl(kafka: KafkaSettings) -> bool:
    return kafka.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def uses_tls(kafka: KafkaSettings) -> bool:
    return kafka.security_protocol in ("SSL", "SASL_SSL")


def _secret(value: Any) -> str:
    return "" if value is None else str(value.get_secret_value())


def confluent_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka properties: the brokers, security protocol, SASL login and TLS files."""
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
        "logger": CLIENT_LOGGER,
    }
    if uses_sasl(kafka):
        conf["sasl.mechanism"] = kafka.sasl_mechanism
        conf["sasl.username"] = _secret(kafka.sasl_username)
        conf["sasl.password"] = _secret(kafka.sasl_password)
    if uses_tls(kafka):
        conf["ssl.endpoint.identification.algorithm"] = "https"  # the broker's name is checked
        if kafka.ssl_ca_file:
            conf["ssl.ca.location"] = kafka.ssl_ca_file
        if kafka.ssl_cert_file:
            conf["ssl.certificate.location"] = kafka.ssl_cert_file
            conf["ssl.key.location"] = kafka.ssl_key_file
        if kafka.ssl_key_password is not None:
            conf["ssl.key.password"] = _secret(kafka.ssl_key_password)
    return conf


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of the aiokafka clients (None without TLS): the same files as librdkafka's.

    Certificates are verified against ``ssl_ca_file`` (the system's CAs when
    unset) and the broker's host name is checked, as librdkafka does.
    """
    if not uses_tls(kafka):
        return None
    check_usable(kafka)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=kafka.ssl_ca_file)
        if kafka.ssl_cert_file:
            context.load_cert_chain(
                kafka.ssl_cert_file,
                kafka.ssl_key_file,
                password=_secret(kafka.ssl_key_password) or None,
            )
    except (OSError, ssl.SSLError) as exc:
        raise KafkaSecurityError(f"cannot load the Kafka TLS files: {exc}") from None
    return context


def faust_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Faust app options for the security settings (its consumer and producer both use them)."""
    import faust  # only the worker needs it; the commands import this module too

    check_usable(kafka)
    context = ssl_context(kafka)
    if uses_sasl(kafka):
        credentials: faust.types.auth.CredentialsT = faust.SASLCredentials(
            username=_secret(kafka.sasl_username),
            password=_secret(kafka.sasl_password),
            ssl_context=context,  # SASL_SSL with a context, SASL_PLAINTEXT without
            mechanism=kafka.sasl_mechanism,
        )
    elif context is not None:
        credentials = faust.SSLCredentials(context)
    else:
        return {}
    return {"broker_credentials": credentials}


def aiokafka_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Options of a plain aiokafka client (the fleet topics' followers and writers)."""
    check_usable(kafka)
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "security_protocol": kafka.security_protocol,
        "ssl_context": ssl_context(kafka),
    }
    if uses_sasl(kafka):
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = _secret(kafka.sasl_username)
        options["sasl_plain_password"] = _secret(kafka.sasl_password)
    return options


def check_usable(kafka: KafkaSettings) -> None:
    """SASL has its login and each TLS file can be read (else a one-line KafkaSecurityError)."""
    if uses_sasl(kafka) and (kafka.sasl_username is None or kafka.sasl_password is None):
        raise KafkaSecurityError(
            f"kafka.security_protocol {kafka.security_protocol} needs kafka.sasl_username and"
            " kafka.sasl_password (CONVEYOR_KAFKA__SASL_USERNAME, CONVEYOR_KAFKA__SASL_PASSWORD)"
        )
    for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
        path = getattr(kafka, name)
        if path and not os.access(path, os.R_OK):
            reason = "does not exist" if not os.path.exists(path) else "is not readable"
            raise KafkaSecurityError(f"kafka.{name} {path} {reason}")


class Unreachable(str):
    """A problem that may pass by itself: nothing answered (a service restarting, a
    failover); a refused login, a bad certificate or a missing topic does not."""

    __slots__ = ()


def connection_problem(kafka: KafkaSettings, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """Why no client can talk to the brokers (one line), or None when one could.

    A refused login or a failed TLS handshake is reported at once; an
    unreachable broker after ``timeout_s``.
    """
    try:
        check_usable(kafka)
    except KafkaSecurityError as exc:
        return str(exc)
    mask = Redactor([_secret(kafka.sasl_password), _secret(kafka.ssl_key_password)])
    errors: list[KafkaError] = []
    conf = {**confluent_config(kafka), "logger": _QUIET, "error_cb": errors.append}
    try:
        client = AdminClient(conf)
    except KafkaException as exc:
        return mask(f"invalid Kafka client configuration: {_describe(exc.args[0])}")
    deadline = time.monotonic() + timeout_s
    last: KafkaError | None = None
    while True:
        try:
            client.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return None
        except KafkaException as exc:
            last = exc.args[0]
        client.poll(0)  # serves error_cb
        fatal = next((e for e in errors if _is_fatal(e)), None)
        if fatal is not None:
            return mask(f"Kafka at {kafka.bootstrap_servers}: {_kind(fatal)}: {_describe(fatal)}")
        if time.monotonic() >= deadline:
            cause = errors[-1] if errors else last
            detail = f": {_describe(cause)}" if cause is not None else ""
            return Unreachable(
                mask(
                    f"no answer from Kafka at {kafka.bootstrap_servers} within {timeout_s:g} s"
                    f"{detail}"
                )
            )


def _is_fatal(error: KafkaError) -> bool:
    # A client certificate the broker refuses ends the handshake with an alert,
    # which librdkafka reports as a transport error.
    return error.code() in FATAL_CODES or "SSL routines" in error.str()


def _kind(error: KafkaError) -> str:
    return "login refused" if error.code() == KafkaError._AUTHENTICATION else "TLS failed"


_BROKER_PREFIX = re.compile(r"^[a-z_]+://\S+: ")


def _describe(error: Any) -> str:
    """librdkafka's message on one line, without the broker's name and "(after N ms in state X)"."""
    text = error.str() if isinstance(error, KafkaError) else str(error)
    text = _BROKER_PREFIX.sub("", " ".join(text.split()))
    head, sep, tail = text.rpartition(" (after ")
    return head if sep and tail.endswith(")") else text
