"""The chart's console: off by default; own Deployment, Service, optional Ingress and secrets."""

from __future__ import annotations

from tests.support import chart

ON = {
    **chart.SECRET,
    "secrets": {"console": {"tokens": {"name": "console-logins"}}},
    "console": {"enabled": True},
}


def test_no_console_unless_enabled() -> None:
    docs = chart.render(chart.SECRET)
    names = [d["metadata"]["name"] for d in docs]
    assert not [n for n in names if "console" in n]


def test_the_console_refuses_to_render_when_nobody_could_log_in() -> None:
    error = chart.render_error(
        {"secrets": {"postgres": {"dsn": {"name": "pg"}}}, "console": {"enabled": True}}
    )
    assert "nobody could log in" in error


def test_the_console_deployment_listens_for_its_service_with_only_its_secrets() -> None:
    docs = chart.render(ON)
    deployment = chart.one(docs, "Deployment", "conveyor-console")
    (container,) = chart.pod_spec(deployment)["containers"]
    assert container["args"] == ["console"]
    env = chart.container_env(container, docs)
    assert env["CONVEYOR_CONSOLE__HOST"] == "0.0.0.0", "in its pod: every address"
    assert env["CONVEYOR_CONSOLE__TOKENS"] == "secret:console-logins/console-tokens"
    assert env.get("CONVEYOR_CRM__KEYRING") is None and env.get("CONVEYOR_LLM__API_KEY") is None
    assert container["ports"] == [{"name": "http", "containerPort": 9180, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = chart.one(docs, "Service", "conveyor-console")
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "console"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    worker = chart.one(docs, "Deployment", "conveyor")
    worker_env = chart.container_env(chart.pod_spec(worker)["containers"][0], docs)
    assert "CONVEYOR_CONSOLE__TOKENS" not in worker_env, "workers never get the console's logins"
    assert worker_env["CONVEYOR_CONSOLE__HOST"] == "127.0.0.1"
    assert not chart.by_kind(docs, "Ingress")


def test_an_ingress_routes_its_hosts_to_the_console_service() -> None:
    ingress = {"enabled": True, "className": "nginx", "hosts": [{"host": "c.example.com"}]}
    docs = chart.render({**ON, "console": {"enabled": True, "ingress": ingress}})
    rule = chart.one(docs, "Ingress")["spec"]["rules"][0]
    assert rule["host"] == "c.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "conveyor-console", "port": {"name": "http"}}


def test_a_trusted_proxy_alone_is_a_way_in() -> None:
    values = {
        "secrets": {"postgres": {"dsn": {"name": "pg"}}},
        "console": {"enabled": True},
        "config": {"console": {"trusted_proxies": ["10.0.0.0/8"]}},
    }
    docs = chart.render(values)
    assert chart.one(docs, "Deployment", "conveyor-console")
