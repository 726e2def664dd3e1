"""Kafka security in the chart: the login and TLS files reach every pod that talks to Kafka.

Workers and the ``topics`` hook get ``secrets.kafka.*`` and the ``kafkaTls``
Secret mounted read-only; the ``migrate`` hook gets neither. Mistakes that
would only show as a pod unable to connect are refused at render time.
"""

from __future__ import annotations

from typing import Any

from tests.support import chart

SASL_TLS = {
    **chart.SECRET,
    "kafkaTls": {"secretName": "kafka-tls"},
    "config": {
        "kafka": {
            "security_protocol": "SASL_SSL",
            "ssl_ca_file": "/etc/conveyor/kafka-tls/ca.crt",
        }
    },
}
SECRETS = ("SASL_USERNAME", "SASL_PASSWORD", "SSL_KEY_PASSWORD")


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pods = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            name = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            pods[name] = chart.pod_spec(doc)
    return pods


def test_workers_and_the_topics_hook_get_the_login_and_the_tls_files() -> None:
    docs = chart.render(SASL_TLS)
    pods = _pods(docs)
    assert set(pods) == {"worker", "migrate", "topics"}
    for name, pod in pods.items():
        container = pod["containers"][0]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        env = chart.container_env(container, docs)
        if name == "migrate":
            assert "kafka-tls" not in mounts and "kafka-tls" not in volumes
            assert not {f"CONVEYOR_KAFKA__{field}" for field in SECRETS} & set(env)
            continue
        assert mounts["kafka-tls"] == {
            "name": "kafka-tls",
            "mountPath": "/etc/conveyor/kafka-tls",
            "readOnly": True,
        }
        assert volumes["kafka-tls"]["secret"] == {"secretName": "kafka-tls", "defaultMode": 0o440}
        assert env["CONVEYOR_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["CONVEYOR_KAFKA__SSL_CA_FILE"] == "/etc/conveyor/kafka-tls/ca.crt"
        for field in SECRETS:
            # From existingSecret, optional (None here): a key it lacks stays unset.
            assert f"CONVEYOR_KAFKA__{field}" in env, (name, field)


def test_a_default_install_mounts_nothing_and_passes_no_kafka_login() -> None:
    docs = chart.render(chart.SECRET)
    for pod in _pods(docs).values():
        assert [v["name"] for v in pod["volumes"]] == ["tmp"]


def test_sasl_without_a_login_is_refused() -> None:
    error = chart.render_error(
        {
            "secrets": {"postgres": {"dsn": {"name": "db"}}},
            "config": {"kafka": {"security_protocol": "SASL_SSL"}},
        }
    )
    assert "config.kafka.security_protocol SASL_SSL needs secrets.kafka.sasl_username" in error
    # Either the login's own Secret or existingSecret will do.
    chart.render(
        {
            "secrets": {
                "postgres": {"dsn": {"name": "db"}},
                "kafka": {"sasl_username": {"name": "k"}, "sasl_password": {"name": "k"}},
            },
            "config": {"kafka": {"security_protocol": "SASL_SSL"}},
        }
    )


def test_tls_files_and_their_secret_go_together() -> None:
    no_secret = {**SASL_TLS, "kafkaTls": {"secretName": ""}}
    assert "kafkaTls.secretName is empty: nothing is mounted there" in chart.render_error(no_secret)
    unused = {**chart.SECRET, "kafkaTls": {"secretName": "kafka-tls"}}
    assert "no config.kafka.ssl_ca_file, ssl_cert_file or ssl_key_file points into it" in (
        chart.render_error(unused)
    )
    # A file elsewhere (e.g. baked into the image) needs no mount.
    chart.render(
        {
            **chart.SECRET,
            "config": {"kafka": {"security_protocol": "SSL", "ssl_ca_file": "/etc/ssl/ca.pem"}},
        }
    )


def test_a_worker_group_cannot_change_the_security_protocol() -> None:
    error = chart.render_error(
        {
            **chart.SECRET,
            "workerGroups": {
                "all": {
                    "jobTypes": [
                        "asset_process",
                        "knowledge_graph_extract",
                        "crm_sync_pipelines",
                        "crm_webhook",
                        "message_send",
                    ],
                    "dlqMirror": True,
                    "config": {"kafka": {"security_protocol": "SSL"}},
                }
            },
        }
    )
    assert "kafka.security_protocol cannot differ per worker group" in error
