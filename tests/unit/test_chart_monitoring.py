"""The chart's ServiceMonitor and PrometheusRule: real metric names, a runbook per alert."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

import streams.metrics  # noqa: F401  (registers the metric families)
from tests.support import chart

FULL = chart.CHART / "ci" / "full-values.yaml"
DEPLOYING = chart.ROOT / "docs" / "DEPLOYING.md"
INGEST = ["asset_process", "knowledge_graph_extract"]
LIGHT = ["crm_sync_pipelines", "crm_webhook", "message_send"]


# --- Prometheus Operator -------------------------------------------------------------------


def _exported_metric_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.update(sample.name for sample in family.samples)
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_alerts_use_metrics_the_worker_exports_and_each_has_a_runbook() -> None:
    docs = chart.render(files=[chart.CHART / "ci" / "monitoring-values.yaml"])
    rules = chart.one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    alerts = {rule["alert"] for rule in rules}
    assert alerts == {
        "ConveyorDeadLetters",
        "ConveyorJobsTimingOut",
        "ConveyorConsumerLagGrowing",
        "ConveyorNoPartitionsAssigned",
        "ConveyorEventLoopLag",
        "ConveyorJobTypePaused",
    }
    exported = _exported_metric_names()
    for rule in rules:
        expr = rule["expr"]
        used = set(re.findall(r"\b(conveyor_[a-z_]+)\b", expr))
        assert used <= exported, f"{rule['alert']} uses {used - exported}, not exported"
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), rule["alert"]
    unassigned = next(r for r in rules if r["alert"] == "ConveyorNoPartitionsAssigned")
    assert "sum(conveyor_assigned_partitions{" in unassigned["expr"]
    lag = next(r for r in rules if r["alert"] == "ConveyorConsumerLagGrowing")
    assert "kafka_consumergroup_lag{consumergroup=~`conveyor`}" in lag["expr"]
    # A paused job type's topics grow lag by design: left out, reported by their own alert.
    assert "unless on (topic)" in lag["expr"] and "conveyor_paused{" in lag["expr"]
    paused = next(r for r in rules if r["alert"] == "ConveyorJobTypePaused")
    assert paused["labels"]["severity"] == "info" and paused["for"] == "1h"
    docs_text = DEPLOYING.read_text(encoding="utf-8")
    for alert in alerts:
        assert f"#### {alert}" in docs_text, f"{alert} has no runbook in docs/DEPLOYING.md"


def test_service_monitor_scrapes_the_metrics_service_with_the_worker_group() -> None:
    docs = chart.render(files=[FULL])
    monitor = chart.one(docs, "ServiceMonitor")
    service = chart.one(docs, "Service", "conveyor-metrics")
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["relabelings"][0]["targetLabel"] == "worker_group"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    rule = chart.one(docs, "PrometheusRule")
    urls = [
        r.get("annotations", {}).get("runbook_url")
        for r in rule["spec"]["groups"][0]["rules"]
        if "alert" in r
    ]
    assert "https://git.example.com/conveyor/docs/DEPLOYING.md#conveyordeadletters" in urls


def test_no_partitions_alert_per_group_not_for_one_allowed_to_scale_to_zero() -> None:
    values = {
        **chart.SECRET,
        "metrics": {"prometheusRule": {"enabled": True}},
        "workerGroups": {
            "ingest": {"jobTypes": INGEST, "autoscaling": {"enabled": True, "minReplicaCount": 0}},
            "light": {"jobTypes": LIGHT, "dlqMirror": True},
        },
    }
    rules = chart.one(chart.render(values), "PrometheusRule")["spec"]["groups"][0]["rules"]
    groups = [
        r["labels"]["worker_group"] for r in rules if r["alert"] == "ConveyorNoPartitionsAssigned"
    ]
    assert groups == ["light"]
