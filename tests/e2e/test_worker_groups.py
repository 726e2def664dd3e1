"""Worker groups as the chart renders them, run as real workers against the real Kafka.

The chart restricts a group to its job types with settings alone (the other
job types' ``enabled: false``, the mirror off, its own consumer group): each
worker started with a Deployment's rendered environment is assigned exactly
its group's topics, and runs its jobs.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from streams.registry import build_registry
from streams.settings import ENV_NESTED_DELIMITER, ENV_PREFIX
from tests.support import chart
from tests.support.probe import probe_jobs, wait_done
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def _values_from_env(env: dict[str, str]) -> dict[str, Any]:
    """The chart's ``config:`` for a stack's variables (the DSN stays a secret)."""
    config: dict[str, Any] = {}
    for name, value in env.items():
        path = name.removeprefix(ENV_PREFIX).lower().split(ENV_NESTED_DELIMITER)
        if path == ["postgres", "dsn"]:
            continue
        node = config
        for part in path[:-1]:
            node = node.setdefault(part, {})
        lists = ("allowed_hosts", "allowed_account_hosts")
        node[path[-1]] = value.split(",") if path[-1] in lists else value
    return config


def _typed(config: dict[str, Any]) -> dict[str, Any]:
    """Numbers and booleans as YAML types (the schema wants them typed)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out[key] = _typed(value)
        elif value in ("true", "false"):
            out[key] = value == "true"
        elif isinstance(value, str) and value.replace(".", "", 1).isdigit():
            out[key] = float(value) if "." in value else int(value)
        else:
            out[key] = value
    return out


async def test_each_group_is_assigned_only_its_topics_and_runs_its_jobs(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    config = _typed(_values_from_env(stack.env))
    config["jobs"]["probe"]["enabled"] = True
    rest = ["asset_process", "knowledge_graph_extract", "crm_sync_pipelines"]
    rest += ["crm_webhook", "message_send"]
    values = {
        "existingSecret": "conveyor",
        "config": config,
        "workerGroups": {
            "probes": {"jobTypes": ["probe"], "dlqMirror": True},
            "rest": {"jobTypes": rest},
        },
    }
    docs = chart.render(values)
    registry = build_registry(stack.settings())
    expected = {
        "probes": {"probe"},
        # crm and message jobs have no handler yet: not subscribed.
        "rest": {"asset.process", "knowledge_graph.extract"},
    }
    workers = {}
    for group, job_types in expected.items():
        deployment = chart.one(docs, "Deployment", f"conveyor-{group}")
        env = chart.container_env(deployment["spec"]["template"]["spec"]["containers"][0], docs)
        env = {k: v for k, v in env.items() if v is not None and not v.startswith("secret:")}
        workers[group] = worker_factory(stack, **env)
        topics = {registry.topic_for(t) for t in job_types}
        topics |= {t + registry.retry_suffix for t in topics}
        # Document and graph jobs have fair share: their deferred topics too.
        fair = [registry.specs[t] for t in job_types if registry.specs[t].policy.fairness != "none"]
        topics |= {registry.deferred_topic(spec) for spec in fair}
        if group == "probes":
            topics.add(registry.dlq_topic)
        assigned = workers[group].wait_for(
            lambda e: e.get("event") == "worker.partitions_assigned" and e.get("partitions", 0) > 0
        )
        assert {tp.rsplit(":", 1)[0] for tp in assigned["assigned"]} == topics, group
        # One member per group: it holds every partition of its topics.
        assert assigned["partitions"] == len(topics) * 3, group
    jobs = probe_jobs(10, max_sleep_ms=5)
    stack.publish(jobs)
    done = await wait_done(db, jobs)
    assert (done.distinct, done.duplicated) == (10, 0)
    assert workers["rest"].count("job.succeeded") == 0
