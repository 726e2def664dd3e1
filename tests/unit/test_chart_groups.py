"""Worker groups and lag autoscaling in the chart, as the real helm renders them."""

from __future__ import annotations

from typing import Any

import pytest

from streams.settings import Settings
from tests.support import chart

FULL = chart.CHART / "ci" / "full-values.yaml"


# --- worker groups ----------------------------------------------------------------------

INGEST = ["asset_process", "knowledge_graph_extract"]
LIGHT = ["crm_sync_pipelines", "crm_webhook", "message_send"]


def _groups(**groups: dict[str, Any]) -> dict[str, Any]:
    return {**chart.SECRET, "workerGroups": groups}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            _groups(
                a={"jobTypes": INGEST, "dlqMirror": True}, b={"jobTypes": [*LIGHT, "asset_process"]}
            ),
            "asset_process is in workerGroups.a and workerGroups.b.jobTypes",
        ),
        (
            _groups(a={"jobTypes": INGEST, "dlqMirror": True}, b={"jobTypes": LIGHT[:2]}),
            "config.jobs.message_send is enabled but no worker group lists it",
        ),
        (
            _groups(
                a={"jobTypes": INGEST, "dlqMirror": True}, b={"jobTypes": LIGHT, "dlqMirror": True}
            ),
            "exactly one worker group (dlqMirror: true), not 2",
        ),
        (
            _groups(a={"jobTypes": INGEST}, b={"jobTypes": LIGHT}),
            "exactly one worker group (dlqMirror: true), not 0",
        ),
        (
            _groups(a={"jobTypes": [*INGEST, *LIGHT, "probe"], "dlqMirror": True}),
            "workerGroups.a.jobTypes lists probe, which config.jobs.probe.enabled turns off",
        ),
        (
            _groups(a={"jobTypes": [*INGEST, *LIGHT], "dlqMirror": True}, b={}),
            "workerGroups.b runs nothing",
        ),
        (
            _groups(
                a={"jobTypes": INGEST, "config": {"jobs": {"asset_process": {"topic": "t"}}}},
                b={"jobTypes": LIGHT, "dlqMirror": True},
            ),
            "workerGroups.a.config.jobs.asset_process.topic cannot differ per worker group",
        ),
        (
            _groups(
                a={"jobTypes": INGEST, "config": {"kafka": {"dlq_topic": "d"}}},
                b={"jobTypes": LIGHT, "dlqMirror": True},
            ),
            "workerGroups.a.config.kafka.dlq_topic cannot differ per worker group",
        ),
    ],
)
def test_worker_group_mistakes_are_refused(values: dict[str, Any], message: str) -> None:
    assert message in chart.render_error(values)


def test_worker_groups_get_a_deployment_and_a_disruption_budget_each() -> None:
    docs = chart.render(files=[chart.CHART / "ci" / "worker-groups-values.yaml"])
    deployments = {d["metadata"]["name"]: d for d in chart.by_kind(docs, "Deployment")}
    assert deployments["conveyor-ingest"]["spec"]["replicas"] == 3
    assert deployments["conveyor-light"]["spec"]["replicas"] == 2
    selectors = [d["spec"]["selector"]["matchLabels"] for d in deployments.values()]
    assert selectors[0] != selectors[1], "each Deployment must own only its pods"
    budgets = {
        p["metadata"]["name"]: p["spec"]["selector"]["matchLabels"]
        for p in chart.by_kind(docs, "PodDisruptionBudget")
    }
    assert budgets == {
        name: d["spec"]["selector"]["matchLabels"] for name, d in deployments.items()
    }


# --- autoscaling (KEDA) -------------------------------------------------------------------


def test_autoscaling_makes_a_scaled_object_per_group_and_leaves_out_replicas() -> None:
    docs = chart.render(files=[FULL])
    ingest = chart.one(docs, "Deployment", "conveyor-ingest")
    assert "replicas" not in ingest["spec"]
    assert chart.one(docs, "Deployment", "conveyor-light")["spec"]["replicas"] == 2
    scaled = chart.one(docs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "conveyor-ingest",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
    kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
    jobs = Settings().jobs
    topics = [jobs.asset_process.topic, jobs.knowledge_graph_extract.topic]
    # asset and graph jobs have fair share: their deferred topics' lag counts too
    expected = [x for t in topics for x in (t, t + ".retry", t + ".deferred")]
    assert [t["metadata"]["topic"] for t in kafka] == expected
    group_id = chart.env_entries(ingest)["CONVEYOR_KAFKA__GROUP_ID"]["value"]
    for trigger in kafka:
        metadata = trigger["metadata"]
        assert metadata["consumerGroup"] == group_id
        assert metadata["bootstrapServers"] == "kafka-0.kafka:9092,kafka-1.kafka:9093"
        assert metadata["excludePersistentLag"] == "true"
        assert metadata["lagThreshold"] == "50"
        assert metadata["offsetResetPolicy"] == "earliest"
        assert metadata["sasl"] == "scram_sha512"
        assert trigger["authenticationRef"] == {"name": "kafka-auth"}
    assert [t["type"] for t in spec["triggers"]][-1] == "prometheus"
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]


def test_autoscaling_refuses_more_replicas_than_partitions() -> None:
    values = {**chart.SECRET, "autoscaling": {"enabled": True, "maxReplicaCount": 7}}
    error = chart.render_error(values)
    assert "autoscaling.maxReplicaCount (7) is above config.kafka.topic_partitions (6)" in error
    values["config"] = {"kafka": {"topic_partitions": 12}}
    assert chart.one(chart.render(values), "ScaledObject")["spec"]["maxReplicaCount"] == 7
    group = {
        "jobTypes": [*INGEST, *LIGHT],
        "dlqMirror": True,
        "autoscaling": {"enabled": True, "maxReplicaCount": 9},
    }
    error = chart.render_error(_groups(all=group))
    assert "workerGroups.all.autoscaling.maxReplicaCount (9)" in error
