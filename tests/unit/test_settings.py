from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streams.settings import ConfigError, forget_environment, load_settings, masked
from tests.support.stack import patched_env


def test_defaults_are_documented_values() -> None:
    with patched_env({}):
        s = load_settings()
    assert s.chunking.size == 600 and s.chunking.overlap == 120
    assert s.jobs.asset_process.timeout_s == 300
    assert s.jobs.message_send.timeout_s == 150
    assert s.worker.drain_timeout_s == 25
    assert s.kafka.commit_interval_s <= 1


def test_one_nested_field_overrides_without_losing_the_others() -> None:
    with patched_env({"CONVEYOR_JOBS__ASSET_PROCESS__CONCURRENCY": "7"}):
        s = load_settings()
    assert s.jobs.asset_process.concurrency == 7
    assert s.jobs.asset_process.topic == "jobs.asset.process"


def test_every_bad_variable_gets_its_own_line() -> None:
    env = {
        "CONVEYOR_JOBS__ASSET_PROCESS__CONCURRENCY": "many",
        "CONVEYOR_KAFKA__COMMIT_INTERVAL_S": "-1",
        "CONVEYOR_KAFKA__NO_SUCH_THING": "1",
    }
    with patched_env(env), pytest.raises(ConfigError) as caught:
        load_settings()
    lines = caught.value.lines
    assert len(lines) == 3
    for name in env:
        assert any(line.startswith(name + ":") for line in lines), (name, lines)


def test_allowed_hosts_accepts_a_comma_list() -> None:
    with patched_env({"CONVEYOR_HTTP__ALLOWED_HOSTS": "127.0.0.1, files.internal"}):
        assert load_settings().http.allowed_hosts == ["127.0.0.1", "files.internal"]


def test_secrets_are_masked_in_config_output() -> None:
    env = {
        "CONVEYOR_POSTGRES__DSN": "postgresql://u:hunter2-secret@db/x",
        "CONVEYOR_EMBEDDING__API_KEY": "sk-very-secret",
    }
    with patched_env(env):
        dumped = json.dumps(masked(load_settings()))
    assert "hunter2-secret" not in dumped and "sk-very-secret" not in dumped
    assert "**********" in dumped


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.commands.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_invalid_configuration_exits_2_before_connecting() -> None:
    result = _cli(
        "run",
        env={
            "CONVEYOR_WORKER__DRAIN_TIMEOUT_S": "soon",
            "CONVEYOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
        },
    )
    assert result.returncode == 2
    assert "CONVEYOR_WORKER__DRAIN_TIMEOUT_S" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_command_prints_effective_json() -> None:
    result = _cli("config", env={"CONVEYOR_KAFKA__GROUP_ID": "g-from-env"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kafka"]["group_id"] == "g-from-env"


def test_allowlist_entries_are_validated_at_load() -> None:
    with patched_env({"CONVEYOR_HTTP__ALLOWED_HOSTS": "files.internal:9000, 127.0.0.1:*"}):
        assert load_settings().http.allowed_hosts == ["files.internal:9000", "127.0.0.1:*"]
    with (
        patched_env({"CONVEYOR_HTTP__ALLOWED_HOSTS": "files.internal:http"}),
        pytest.raises(ConfigError) as caught,
    ):
        load_settings()
    assert caught.value.lines[0].startswith("CONVEYOR_HTTP__ALLOWED_HOSTS:")


def test_a_storage_credential_needs_its_origins() -> None:
    header = {"CONVEYOR_HTTP__STORAGE_AUTH_HEADER": "Bearer s3cr3t-token"}
    with patched_env(header), pytest.raises(ConfigError) as caught:
        load_settings()
    assert "storage_auth_origins" in caught.value.lines[0]
    origins = {
        "CONVEYOR_HTTP__STORAGE_AUTH_ORIGINS": "https://files.example.com, http://[::1]:9000"
    }
    with patched_env({**header, **origins}):
        assert load_settings().http.storage_auth_origins == [
            "https://files.example.com",
            "http://[::1]:9000",
        ]
    for bad in ("files.example.com", "https://user@files.example.com", "https://x.com/path"):
        with (
            patched_env({**header, "CONVEYOR_HTTP__STORAGE_AUTH_ORIGINS": bad}),
            pytest.raises(ConfigError),
        ):
            load_settings()


@pytest.mark.parametrize(
    "name",
    [
        "CONVEYOR_KAFAK__BOOTSTRAP_SERVERS",
        "CONVEYOR_JOBZ__ASSET_PROCESS__CONCURRENCY",
        "conveyor_jobz__asset_process__concurrency",
    ],
)
def test_an_unknown_group_is_an_error_naming_it(name: str) -> None:
    with patched_env({name: "3"}), pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.lines == [f"{name}: unknown settings group {name[9:].split('__')[0]!r}"]


def test_a_single_underscore_between_group_and_field_is_an_error_with_the_right_name() -> None:
    name = "CONVEYOR_KAFKA_BOOTSTRAP_SERVERS"
    with patched_env({name: "x:1"}), pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.lines == [
        f"{name}: not a setting; did you mean CONVEYOR_KAFKA__BOOTSTRAP_SERVERS?"
    ]


def test_the_dev_scripts_own_variables_are_not_settings_errors() -> None:
    # scripts/services and the tests read these; they share the prefix.
    env = {
        "CONVEYOR_SERVICES_DIR": "/tmp/x",
        "CONVEYOR_KAFKA_PORT": "9092",
        "CONVEYOR_KAFKA_HEAP_OPTS": "-Xmx1g",
        "CONVEYOR_SOAK": "1",
    }
    with patched_env(env):
        assert load_settings().kafka.group_id == "conveyor"


def test_an_unknown_group_exits_2_naming_the_variable_with_the_other_problems() -> None:
    result = _cli(
        "config",
        env={"CONVEYOR_KAFAK__BOOTSTRAP_SERVERS": "127.0.0.1:1", "CONVEYOR_CHUNKING__SIZE": "1"},
    )
    assert result.returncode == 2
    assert "CONVEYOR_KAFAK__BOOTSTRAP_SERVERS: unknown settings group 'KAFAK'" in result.stderr
    assert "CONVEYOR_CHUNKING__SIZE:" in result.stderr


def test_max_crashes_of_one_is_refused_with_the_reason() -> None:
    """With 1, a death among others would dead-letter every job that ran beside it."""
    with patched_env({"CONVEYOR_JOBS__PROBE__MAX_CRASHES": "1"}), pytest.raises(ConfigError) as c:
        load_settings()
    assert "CONVEYOR_JOBS__PROBE__MAX_CRASHES" in str(c.value)
    assert "use 2 or more" in str(c.value)
    for ok in ("0", "2", "5"):
        with patched_env({"CONVEYOR_JOBS__PROBE__MAX_CRASHES": ok}):
            assert load_settings().jobs.probe.max_crashes == int(ok)


def test_settings_read_in_any_case_are_forgotten_in_any_case() -> None:
    """pydantic-settings reads ``conveyor_llm__api_key`` as the LLM key: clearing only
    upper-case names left it for every child process to inherit (issue 19)."""
    env = {"conveyor_llm__api_key": "sk-lower", "Conveyor_Embedding__Api_Key": "sk-mixed"}
    saved = dict(os.environ)  # forget_environment clears this session's settings too
    try:
        with patched_env(env):
            settings = load_settings()
            assert settings.llm.api_key is not None
            assert settings.llm.api_key.get_secret_value() == "sk-lower"
            forgotten = forget_environment()
            assert set(env) <= set(forgotten)
            assert not [n for n in os.environ if n.upper().startswith("CONVEYOR_")]
    finally:
        os.environ.clear()
        os.environ.update(saved)
