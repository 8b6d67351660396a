"""Monitoring and deployment files, checked with the real tools.

promtool checks the Prometheus config and alert rules and runs their unit tests; a real
Prometheus scrapes a real worker and answers PromQL; every Grafana query runs in that
Prometheus and names only metrics that exist; Debian's docker-compose validates the stack.
A missing tool fails the test with the package to install: a skipped check proves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from leadpulse.alerts.service import AlertMetrics
from leadpulse.collector.app import CollectorMetrics
from leadpulse.dev.embedded import RedisServer, Service, TansuBroker, free_port

from tests.support.kafkatools import WorkerProcess, event_bytes, produce

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "leadpulse.rules.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "leadpulse.json"
COMPOSE = REPO / "docker-compose.yml"
OPERATIONS = REPO / "docs" / "operations.md"

#: the `up` series Prometheus writes for every target, which rules may use besides the services' own
PROMETHEUS_METRICS = {"up"}
#: Grafana's interval variables, replaced by a fixed window to run a panel's query directly
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan",
}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: apt-get install {package} (Debian/Ubuntu)")
    return path


def run(*cmd: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def alert_names() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for group in rules["groups"] for r in group["rules"]]


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query on the dashboard."""
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def grafana_free(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label matchers, groupings and functions removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    # a name, not the unit of a duration (15m) nor a function (rate)
    for match in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*(?![A-Za-z0-9_:]*\s*\()", expr):
        if match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def exposition_of(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def families(exposition: str) -> set[str]:
    return {line.split()[2] for line in exposition.splitlines()
            if line.startswith("# TYPE ") and not line.split()[2].endswith("_created")}


def exported_names(exposition: str) -> set[str]:
    """Series names a /metrics text can produce, including those of families with no sample yet."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                        "summary": ["_sum", "_count"], "info": ["_info"]}.get(kind, [""])
            names.update(name.removesuffix("_total") + s if kind == "counter" else name + s for s in suffixes)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


# --- promtool ------------------------------------------------------------------------------


def test_the_prometheus_config_and_its_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = tool("promtool", "prometheus")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # Rendered as docker-compose mounts it: the rules directory at the path the config names.
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(RULES.parent / "*.yml")]
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(yaml.safe_dump(config))
    result = run(promtool, "check", "config", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {rendered} is valid prometheus config file syntax" in result.stdout
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout

    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["leadpulse-worker"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 6066, "refresh_interval": "15s"}]


def test_the_alert_rules_pass_promtool_check() -> None:
    result = run(tool("promtool", "prometheus"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout


@pytest.mark.slow
def test_every_alert_has_a_firing_and_a_quiet_unit_test_and_they_pass() -> None:
    promtool = tool("promtool", "prometheus")
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests/"
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        spec = yaml.safe_load(path.read_text())
        assert [str((path.parent / f).resolve()) for f in spec["rule_files"]] == [str(RULES)]
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(alert_names())
    assert alerts - fires == set(), "alerts without a test in which they fire"
    assert alerts - quiet == set(), "alerts without a test in which they stay quiet"
    assert (fires | quiet) - alerts == set(), "tests of alerts that do not exist"

    result = run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_has_a_runbook_section_naming_panels_that_exist() -> None:
    text = OPERATIONS.read_text()
    runbook = text[text.index("\n## Runbook\n"):]
    sections = dict(re.findall(r"^### (\S+)\n(.*?)(?=^##|\Z)", runbook, re.MULTILINE | re.DOTALL))
    alerts = set(alert_names())
    assert alerts - sections.keys() == set(), "alerts without a runbook section in docs/operations.md"
    assert sections.keys() - alerts == set(), "runbook sections of alerts that do not exist"
    titles = {p["title"] for p in orjson.loads(DASHBOARD.read_bytes())["panels"]}
    for name, body in sections.items():
        labels = ["*Means.*", "*Confirm.*", "*Do.*"]
        assert [label for label in labels if label in body] == labels, f"{name}: what it means, how to confirm, what to do"
        # Panels are named in italics: each must be on the dashboard.
        named = {" ".join(m.split()) for m in re.findall(r"(?<![*\w])\*([^*]+)\*(?![*\w])", body)}
        named -= {label.strip("*") for label in labels}
        assert named <= titles, f"{name} names panels the dashboard does not have: {named - titles}"


# --- a real Prometheus scraping a real worker ------------------------------------------------


class PrometheusServer(Service):
    """The `prometheus` binary on a free loopback port, with its TSDB in a scratch directory."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        super().__init__("prometheus", free_port(), workdir)
        self.binary = tool("prometheus", "prometheus")
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))

    def command(self) -> list[str]:
        return [
            self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> bool:
        """/-/ready: the listener opens before the TSDB is loaded, and the API answers 503 until then."""
        assert self.running, self.log.read_text()[-3000:]
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/-/ready") as resp:
            return resp.status == 200

    async def api(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])


def scrape_config_for(worker: WorkerProcess) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the worker job aimed at one local worker, every second."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "leadpulse-worker")
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{worker.port}"]}]
    config["scrape_configs"] = [job]
    return config


@pytest.fixture(scope="module")
async def worker(broker: TansuBroker, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkerProcess]:
    workdir = tmp_path_factory.mktemp("worker")
    with contextlib.chdir(workdir):  # Faust writes its <group>-data directory where it starts
        proc = WorkerProcess(broker.bootstrap, redis_server.url, workdir).start()
    try:
        await proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
async def prometheus(worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PrometheusServer]:
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_config_for(worker))
    server.start()
    try:
        await eventually(server.ready, "Prometheus ready")
        yield server
    finally:
        server.stop()


async def eventually(check: Any, what: str, timeout: float = 60.0) -> Any:
    """Poll `check()` until it returns something truthy; the deadline is generous, not a timing claim."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s (last: {result!r})"
        await asyncio.sleep(0.5)


SOURCES_SENT = {"web": 2, "email": 1}


@pytest.fixture(scope="module")
async def scored(worker: WorkerProcess, prometheus: PrometheusServer, broker: TansuBroker) -> None:
    """A few events produced to the worker, once Prometheus has seen them processed."""
    now = int(time.time() * 1000)
    events = [
        ("web", event_bytes(event_id="prom-1", lead_id="prom-lead", source="web", type="page_view", occurred_at=now,
                            properties={"url": "https://acme.io/pricing"})),
        ("email", event_bytes(event_id="prom-2", lead_id="prom-lead", source="email", type="click", occurred_at=now,
                              properties={"url": "https://acme.io/blog"})),
        ("web", event_bytes(event_id="prom-3", lead_id="prom-lead", source="web", type="demo_request", occurred_at=now)),
    ]
    await produce(broker.bootstrap, [(worker.topic(source), b"prom-lead", value) for source, value in events])

    async def processed() -> float:
        result = await prometheus.query("sum(leadpulse_events_total)")
        total = float(result[0]["value"][1]) if result else 0.0
        return total if total >= len(events) else 0.0

    assert await eventually(processed, "Prometheus sees the events processed") == len(events)


@pytest.mark.integration
@pytest.mark.usefixtures("scored")
@pytest.mark.slow
async def test_prometheus_scrapes_the_worker_and_sees_events_processed(worker: WorkerProcess, prometheus: PrometheusServer) -> None:
    # Each read is of the latest scrape: one scrape slower than its 1 s timeout reads up 0 and
    # marks the series stale until the next, so both are awaited rather than read once.
    async def up() -> list[tuple[str, str]] | None:
        found = [(s["metric"]["instance"], s["value"][1]) for s in await prometheus.query('up{job="leadpulse-worker"}')]
        return found if found == [(f"127.0.0.1:{worker.port}", "1")] else None

    async def by_source() -> dict[str, float] | None:
        found = await prometheus.query('sum by (source) (leadpulse_events_total{outcome="scored"})')
        counts = {s["metric"]["source"]: float(s["value"][1]) for s in found}
        return counts if counts == SOURCES_SENT else None

    await eventually(up, "the worker scraped and up")
    await eventually(by_source, f"events by source as sent ({SOURCES_SENT})")

    async def rules_evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in (await prometheus.api("rules"))["groups"] for r in g["rules"]]
        return rules if all(r["health"] == "ok" for r in rules) else None

    rules = await eventually(rules_evaluated, "every rule evaluated without error")
    assert {r["name"] for r in rules if r["type"] == "alerting"} == set(alert_names())

    async def worker_alerts_quiet() -> bool:
        # (an evaluation before the first scrape may leave LeadPulseNoWorkerUp pending for a moment)
        active = {a["labels"]["alertname"] for a in (await prometheus.api("alerts"))["alerts"]}
        return not active & {"LeadPulseNoWorkerUp", "LeadPulseWorkerDown", "LeadPulseWorkerNotReady",
                             "LeadPulseSweepStalled", "LeadPulseDemotionsOverdue"}

    await eventually(worker_alerts_quiet, "no worker alert is pending or firing while the worker is up")

    async def sampled(promql: str) -> bool:
        return bool(await prometheus.query(promql))

    # What the sweep and memory alerts read, as Prometheus sees it from the live worker.
    for promql in ("leadpulse_caught_up == 1", "leadpulse_sweep_last_success_timestamp_seconds > 0",
                   "leadpulse_redis_used_memory_bytes > 0"):
        await eventually(functools.partial(sampled, promql), promql)


@pytest.mark.integration
@pytest.mark.usefixtures("scored")
@pytest.mark.slow
async def test_every_dashboard_query_runs_in_prometheus(prometheus: PrometheusServer) -> None:
    targets = dashboard_targets()
    assert targets
    for title, expr in targets:
        try:
            await prometheus.query(grafana_free(expr))
        except AssertionError as exc:
            raise AssertionError(f"panel {title!r}: {expr}: {exc}") from None

    async def throughput_by_source() -> set[str]:
        expr = next(e for t, e in targets if t == "Throughput by source")
        return {s["metric"].get("source", "") for s in await prometheus.query(grafana_free(expr))}

    assert await eventually(throughput_by_source, "the throughput panel shows the sources sent") == set(SOURCES_SENT)


@pytest.mark.integration
async def test_dashboard_and_rules_use_only_metrics_that_exist(worker: WorkerProcess) -> None:
    status, exposition = await worker.get("/metrics")
    assert status == 200
    # The alerts service's and the collector's metrics, from their own registries.
    alerts = exposition_of(AlertMetrics().registry)
    collector = exposition_of(CollectorMetrics().registry)
    known = exported_names(exposition) | exported_names(alerts) | exported_names(collector) | PROMETHEUS_METRICS
    for title, expr in dashboard_targets():
        assert metric_names(expr), f"{title}: no metric in {expr!r}"
        assert metric_names(expr) <= known, f"panel {title!r} uses unknown metrics {metric_names(expr) - known}"
    for expr in rule_expressions():
        assert metric_names(expr) <= known, f"rule uses unknown metrics {metric_names(expr) - known}: {expr}"

    # Every family the worker and the alerts service export is on the dashboard (a new metric
    # gets a panel).
    used = set().union(*(metric_names(e) for _, e in dashboard_targets()))
    for service, text in (("worker", exposition), ("alerts", alerts)):
        unused = {f for f in families(text) if not any(name.startswith(f) for name in used)}
        assert unused == set(), f"{service} metrics missing from the dashboard: {unused}"


def test_the_dashboard_shows_what_operators_ask_for_and_is_provisioned() -> None:
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}
    assert "sum by (source)" in exprs["Throughput by source"]
    assert "histogram_quantile(0.5," in exprs["Event latency p50 / p99"]
    assert "histogram_quantile(0.99," in exprs["Event latency p50 / p99"]
    assert "leadpulse_consumer_lag_messages" in exprs["Consumer lag by topic"]
    assert "[1h]" in exprs["Handoffs per hour"] and "leadpulse_handoffs_total" in exprs["Handoffs per hour"]
    assert "sum by (reason)" in exprs["Dead letters by reason"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard["panels"])

    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert {p["datasource"]["uid"] for p in panels} == {source["uid"]}
    assert {t["datasource"]["uid"] for p in panels for t in p["targets"]} == {source["uid"]}
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "leadpulse.yml").read_text())
    (provider,) = providers["providers"]
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"


# --- docker-compose and the image -------------------------------------------------------------


def _published(ports: list[Any]) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) whether compose printed the short or the long form."""
    out = []
    for port in ports:
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            ip, host, target = ([""] * (3 - len(parts)) + parts)
            out.append((ip, host, target))
    return out


def test_docker_compose_accepts_the_stack() -> None:
    compose_bin = tool("docker-compose", "docker-compose")
    result = run(compose_bin, "-f", str(COMPOSE), "config", "-q")
    assert result.returncode == 0, result.stderr
    result = run(compose_bin, "-f", str(COMPOSE), "--profile", "demo", "--profile", "alerts", "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"kafka", "redis", "worker", "collector", "alerts", "prometheus", "grafana", "simulate"}
    opt_in = {name: s["profiles"] for name, s in services.items() if s.get("profiles")}
    assert opt_in == {"alerts": ["alerts"], "simulate": ["demo"]}

    kafka = services["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and env["CLUSTER_ID"]
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"] and env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "1"
    assert any(v.endswith(":/var/lib/kafka/data:rw") for v in kafka["volumes"])
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data:rw") for v in redis["volumes"])

    worker = services["worker"]
    assert "container_name" not in worker, "a container_name stops `--scale worker=N`"
    assert all(host == "" for _, host, _ in _published(worker.get("ports", []))), "a fixed host port stops scaling"
    assert worker["command"] == ["worker"] and "6066" in worker["expose"]
    assert worker["environment"]["LEADPULSE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert worker["environment"]["LEADPULSE_HTTP_HOST"] == "0.0.0.0"
    assert {k: v["condition"] for k, v in worker["depends_on"].items()} == {
        "kafka": "service_healthy", "redis": "service_healthy"}
    assert services["collector"]["command"] == ["collector"] and services["alerts"]["command"] == ["alerts"]

    # Prometheus scrapes each service on the port the service is told to listen on, on all interfaces.
    jobs = {j["job_name"]: j["dns_sd_configs"][0] for j in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
            if "dns_sd_configs" in j}
    for job, service, host, port in [("leadpulse-worker", "worker", "LEADPULSE_HTTP_HOST", "LEADPULSE_HTTP_PORT"),
                                     ("leadpulse-collector", "collector", "LEADPULSE_COLLECTOR_HOST", "LEADPULSE_COLLECTOR_PORT"),
                                     ("leadpulse-alerts", "alerts", "LEADPULSE_ALERTS_HOST", "LEADPULSE_ALERTS_PORT")]:
        env = services[service]["environment"]
        assert jobs[job]["names"] == [service] and env[host] == "0.0.0.0"
        assert str(jobs[job]["port"]) == env[port], f"{job} scrapes a port {service} does not listen on"

    prometheus = services["prometheus"]
    assert f"{PROMETHEUS_CONFIG}:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert f"{RULES.parent}:/etc/prometheus/rules:ro" in prometheus["volumes"]
    published = {(name, target): (ip, host) for name, s in services.items()
                 for ip, host, target in _published(s.get("ports", []))}
    assert published[("prometheus", "9090")] == ("127.0.0.1", "9090")
    assert published[("grafana", "3000")] == ("127.0.0.1", "3000")
    assert published[("collector", "8080")] == ("127.0.0.1", "8080")
    assert {ip for ip, _ in published.values()} == {"127.0.0.1"}, "published ports listen on loopback only"
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_the_image_runs_the_worker_as_a_non_root_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    instructions = [line.split(maxsplit=1) for line in dockerfile.splitlines() if line and not line.startswith(("#", " "))]
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    assert final[0] == ["FROM", "python:3.11-slim"]
    args = {op: arg for op, arg in final}
    assert args["USER"] not in ("root", "0")
    assert args["ENTRYPOINT"] == '["leadpulse"]' and args["CMD"] == '["worker"]' and args["EXPOSE"] == "6066"
    assert "LEADPULSE_HTTP_HOST=0.0.0.0" in dockerfile
    assert "[dev]" not in dockerfile
