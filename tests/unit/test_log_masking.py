"""Secrets are masked wherever they sit in a log event, and in ``conveyor config``."""

from __future__ import annotations

import json
from typing import Any

from streams.logs import SecretMasker
from streams.redact import MASK
from streams.settings import load_settings, masked, secret_values
from tests.support.stack import patched_env

KEY = "sk-live-0123456789abcdef"


def _mask(event: dict[str, Any], secrets: tuple[str, ...] = (KEY,)) -> str:
    return json.dumps(SecretMasker(secrets)(None, "info", dict(event)), default=repr)


def test_nested_values_are_masked() -> None:
    out = _mask({"event": "x", "request": {"headers": {"auth": KEY}, "parts": [f"k={KEY}", 1]}})
    assert KEY not in out and MASK in out


def test_exception_objects_are_masked() -> None:
    out = _mask({"event": "x", "error": RuntimeError(f"provider said: bad key {KEY}")})
    assert KEY not in out
    assert "RuntimeError" in out and MASK in out


def test_a_bare_bearer_token_is_masked_even_when_not_configured() -> None:
    out = _mask({"event": "x", "header": "Authorization: Bearer abc.DEF-123_xyz/+=="}, ())
    assert "abc.DEF" not in out and "Bearer " + MASK in out


def test_a_password_inside_a_url_is_masked() -> None:
    out = _mask({"event": f"calling https://user:hunter2-pw@proxy.internal/v1 ({KEY})"}, ())
    assert "hunter2-pw" not in out
    assert "https://user:" + MASK + "@proxy.internal/v1" in out


def test_config_masks_passwords_inside_urls() -> None:
    env = {
        "CONVEYOR_EMBEDDING__BASE_URL": "https://svc:hunter2-pw@proxy.internal/v1",
        "CONVEYOR_LLM__API_KEY": KEY,
    }
    with patched_env(env):
        settings = load_settings()
    shown = json.dumps(masked(settings))
    assert "hunter2-pw" not in shown and KEY not in shown
    assert "https://svc:" + MASK + "@proxy.internal/v1" in shown
    assert "hunter2-pw" in secret_values(settings), "so logs mask it wherever it appears"


def test_a_dsn_password_is_masked_alone_unless_it_repeats_the_user_or_database() -> None:
    real = "postgresql://conveyor:Zq8-real-pw@db.internal:5432/conveyor"
    local = "postgresql://conveyor:conveyor@127.0.0.1:5432/conveyor"
    with patched_env({"CONVEYOR_POSTGRES__DSN": real}):
        assert "Zq8-real-pw" in secret_values(load_settings())
    with patched_env({"CONVEYOR_POSTGRES__DSN": local}):
        secrets = secret_values(load_settings())
    # The local password is the service's own name: masking it alone would
    # blank "conveyor" in every log line; the whole DSN is still masked.
    assert "conveyor" not in secrets and local in secrets
    out = _mask({"event": "worker.starting", "logger": "conveyor.worker", "dsn": local}, secrets)
    assert "conveyor.worker" in out and local not in out
