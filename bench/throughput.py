"""Throughput of no-op jobs: Conveyor's runner vs a bare Faust agent vs raw confluent-kafka.

All three consume the same number of pre-published messages from their own
topic on the same broker, in the same run, each in its own process, and
commit their offsets. The rate is measured from the consumer group's
committed offsets (read with the admin API): from the moment 10 % were
committed to the moment all were, so start-up and the group join are left
out. Conveyor runs the diagnostic ``probe`` job type with ``record=False``
(decode, validate, timeout, handler, decision, offset tracking, the
crash-loop guard; no database write) at log level ``warning``. At
concurrency 8 it also runs with the crash-loop guard off
(``max_crashes=0``) and on, in adjacent pairs, and prints the median ratio;
and with ``ordering`` ``none`` and ``key`` over 1,000 distinct Kafka keys,
in adjacent pairs (``--ordering-pairs``; ``--only-ordering`` runs just
those); and with tracing off and on, at 100 % and at 1 % sampling, exporting
OTLP/HTTP to a receiver in this process that decodes and counts the spans
(``--tracing-pairs``; ``--only-tracing`` runs just those).
``--fleet-pairs N --baseline DIR`` runs the runner of another checkout (DIR,
e.g. ``git archive`` of an earlier commit) and this one in adjacent pairs, at
the default report interval: the cost of what changed between them. Every
topic the benchmark creates is deleted when it is done.

    .venv/bin/python -m bench.throughput [--messages 100000] [--guard-pairs 3]
    .venv/bin/python -m bench.throughput --only-ordering --ordering-pairs 5
    .venv/bin/python -m bench.throughput --only-tracing --tracing-pairs 5
    .venv/bin/python -m bench.throughput --fleet-pairs 7 --baseline /tmp/conveyor-base
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.envelope import JobEnvelope  # noqa: E402
from streams.commands.migrate import migrate  # noqa: E402
from tests.support.stack import Stack, TopicJanitor  # noqa: E402

PARTITIONS = 3
DISTINCT_KEYS = 1000  # the key-ordering comparison's Kafka keys
FAUST_APP = """
import sys, faust
topic_name, group, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = faust.App(group, broker="kafka://{bootstrap}", web_enabled=False, store="memory://",
                topic_allow_declare=False, topic_disable_leader=True,
                broker_commit_interval=0.5, consumer_auto_offset_reset="earliest")
topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                  value_serializer="raw")

@app.agent(topic, concurrency=concurrency)
async def noop(stream):
    async for event in stream.events():
        pass

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()
"""


def committed(admin_conf: dict[str, str], group: str, topic: str) -> int:
    consumer = Consumer({**admin_conf, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        consumer.close()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    bootstrap: str,
    group: str,
    topic: str,
    total: int,
    start: Callable[[], object],
    stop: Callable[[object], None],
    timeout_s: float = 300,
    cpu_us: list[float] | None = None,
) -> float:
    """Messages per second; ``cpu_us``: append the consumer process's CPU µs per message
    over the same window (a figure that other processes on the machine disturb less)."""
    conf = {"bootstrap.servers": bootstrap}
    handle = start()
    pid = handle.pid if isinstance(handle, subprocess.Popen) else None
    try:
        deadline = time.monotonic() + timeout_s
        t10 = None
        while True:
            done = committed(conf, group, topic)
            now = time.monotonic()
            if t10 is None and done >= total * 0.1:
                t10, d10 = now, done
                c10 = cpu_s(pid) if pid is not None else 0.0
            if done >= total:
                assert t10 is not None
                if cpu_us is not None and pid is not None:
                    cpu_us.append((cpu_s(pid) - c10) / max(done - d10, 1) * 1e6)
                return (done - d10) / max(now - t10, 1e-9)
            if now > deadline:
                raise RuntimeError(f"{group}: only {done}/{total} committed in {timeout_s} s")
            time.sleep(0.05)
    finally:
        stop(handle)


def publish(bootstrap: str, topic: str, total: int, job: bool, keys: int | None = None) -> None:
    """``total`` messages; message i is keyed ``i`` (or ``i % keys``: that many distinct keys)."""
    prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for i in range(total):
        value = (
            JobEnvelope(id=f"b-{i}", type="probe", payload={"record": False}).to_bytes()
            if job
            else b'{"noop": true}'
        )
        prod.produce(topic, value, str(i if keys is None else i % keys).encode())
        if i % 10000 == 0:
            prod.poll(0)
    assert prod.flush(60) == 0


def terminate(proc: object) -> None:
    assert isinstance(proc, subprocess.Popen)
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def raw_rate(bootstrap: str, topic: str, group: str, total: int) -> float:
    """A plain confluent-kafka loop in this process, timed from first to last message.

    librdkafka prefetches whole batches in its own threads, so this is the
    ceiling of a Python loop over already-fetched records, not a like-for-like
    consumer: read it as "how much of the budget the broker client itself
    takes", not as a target.
    """
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 500,
        }
    )
    c.subscribe([topic])
    seen, first, deadline = 0, 0.0, time.monotonic() + 120
    try:
        while seen < total and time.monotonic() < deadline:
            batch = c.consume(500, 1.0)
            if batch and not first:
                first = time.monotonic()
            seen += sum(1 for m in batch if m.error() is None)
        elapsed = time.monotonic() - first
        c.commit(asynchronous=False)
    finally:
        c.close()
    return seen / max(elapsed, 1e-9)


def run_faust(
    bootstrap: str, topic: str, group: str, concurrency: int, workdir: Path
) -> subprocess.Popen[bytes]:
    script = workdir / f"bare_faust_{group}.py"
    script.write_text(FAUST_APP.format(bootstrap=bootstrap))
    return subprocess.Popen(
        [sys.executable, str(script), topic, group, str(concurrency)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# Settings the test stacks set that an earlier checkout may not know (it refuses
# unknown ones): left out of a --baseline checkout's environment.
NEWER_SETTINGS = (
    "CONVEYOR_KAFKA__CONTROL_TOPIC",
    "CONVEYOR_KAFKA__STATUS_TOPIC",
    "CONVEYOR_FLEET__REPORT_INTERVAL_S",
    "CONVEYOR_CRM__ALLOWED_ACCOUNT_HOSTS",
)


class SpanSink:
    """An OTLP/HTTP traces endpoint on loopback, in a thread: counts the spans it is sent."""

    def __init__(self) -> None:
        sink = self
        self.spans = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                sink.spans += sum(
                    len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # the count so far (bench/tracing_cost.py asks)
                body = str(sink.spans).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


SINK: SpanSink | None = None


def run_conveyor(
    stack: Stack,
    concurrency: int,
    workdir: Path,
    guard: bool = True,
    ordering: str = "none",
    *,
    source: Path | None = None,
    sampling: float | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **stack.env,
        "CONVEYOR_FLEET__REPORT_INTERVAL_S": "5",  # the default, not the tests' 1 s
        "CONVEYOR_JOBS__PROBE__ENABLED": "true",
        "CONVEYOR_JOBS__PROBE__CONCURRENCY": str(concurrency),
        "CONVEYOR_JOBS__PROBE__ORDERING": ordering,
        "CONVEYOR_LOGGING__LEVEL": "warning",
        "CONVEYOR_DLQ_MIRROR__ENABLED": "false",
    }
    if not guard:  # the runner without its start journal (the crash-loop guard off)
        env["CONVEYOR_JOBS__PROBE__MAX_CRASHES"] = "0"
    if source is not None:  # another checkout's runner (its modules first on the path)
        env = {k: v for k, v in env.items() if k not in NEWER_SETTINGS}
        env["PYTHONPATH"] = str(source)
    if sampling is not None:  # tracing on, exporting to the sink
        assert SINK is not None
        env["CONVEYOR_TRACING__ENABLED"] = "true"
        env["CONVEYOR_TRACING__ENDPOINT"] = SINK.endpoint
        env["CONVEYOR_TRACING__SAMPLING_RATIO"] = str(sampling)
    log = (workdir / f"conveyor-{concurrency}-{stack.prefix}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "streams.commands.cli", "run"],
        env=env,
        cwd=source or ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def conveyor_rate(
    bootstrap: str,
    dsn: str,
    n: int,
    concurrency: int,
    workdir: Path,
    *,
    guard: bool,
    ordering: str = "none",
    keys: int | None = None,
    source: Path | None = None,
    sampling: float | None = None,
    cpu_us: list[float] | None = None,
) -> float:
    stack = Stack(bootstrap, dsn)
    stack.create_topics()
    topic = stack.registry().topic_for("probe")
    try:
        publish(bootstrap, topic, n, job=True, keys=keys)
        return measure(
            bootstrap,
            f"{stack.prefix}-group",
            topic,
            n,
            lambda: run_conveyor(
                stack, concurrency, workdir, guard, ordering, source=source, sampling=sampling
            ),
            terminate,
            cpu_us=cpu_us,
        )
    finally:
        janitor = TopicJanitor()
        janitor.delete(stack)
        janitor.wait()


def paired(
    name: str, runs: tuple[Callable[[], float], Callable[[], float]], pairs: int
) -> tuple[list[float], list[float]]:
    """Run ``runs`` (baseline, variant) alternately ``pairs`` times; print the median ratio."""
    base: list[float] = []
    variant: list[float] = []
    for _ in range(pairs):
        base.append(runs[0]())
        variant.append(runs[1]())
    ratios = [v / b for v, b in zip(variant, base, strict=True)]
    print(
        f"  ratio {name}: {statistics.median(ratios):.2f}"
        f" (median of {len(ratios)} adjacent pair(s): {[round(r, 2) for r in ratios]};"
        f" variant {[round(r) for r in variant]}, baseline {[round(r) for r in base]})",
        flush=True,
    )
    return base, variant


def baselines(bootstrap: str, dsn: str, n: int, workdir: Path) -> dict[str, float]:
    """Raw confluent-kafka, bare Faust and the runner at concurrency 1 and 8."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    run_id = uuid.uuid4().hex[:6]
    results: dict[str, float] = {}
    made: list[str] = []

    def fresh_topic(name: str) -> str:
        futures = admin.create_topics([NewTopic(name, PARTITIONS, 1)])
        for f in futures.values():
            f.result()
        made.append(name)
        return name

    try:
        t = fresh_topic(f"bench-{run_id}-raw")
        publish(bootstrap, t, n, job=False)
        results["raw confluent-kafka"] = raw_rate(bootstrap, t, f"bench-{run_id}-raw", n)
        for conc in (1, 8):
            t = fresh_topic(f"bench-{run_id}-faust{conc}")
            publish(bootstrap, t, n, job=False)
            g = f"bench-{run_id}-faust{conc}"
            results[f"bare Faust agent, concurrency {conc}"] = measure(
                bootstrap,
                g,
                t,
                n,
                lambda t=t, g=g, c=conc: run_faust(bootstrap, t, g, c, workdir),
                terminate,
            )
            results[f"Conveyor runner, concurrency {conc}"] = conveyor_rate(
                bootstrap, dsn, n, conc, workdir, guard=True
            )
    finally:
        if made:
            admin.delete_topics(made)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument(
        "--guard-pairs",
        type=int,
        default=1,
        help="runs of the runner at concurrency 8 with the crash-loop guard off and on "
        "(alternating; medians reported)",
    )
    parser.add_argument(
        "--ordering-pairs",
        type=int,
        default=1,
        help="runs of the runner at concurrency 8 over 1,000 distinct keys with ordering "
        "none and key (alternating; medians reported)",
    )
    parser.add_argument(
        "--only-ordering", action="store_true", help="run only the ordering none/key pairs"
    )
    parser.add_argument(
        "--fleet-pairs",
        type=int,
        default=0,
        help="runs of the runner at concurrency 8 from --baseline and from this checkout"
        " (alternating; only these are run)",
    )
    parser.add_argument("--baseline", type=Path, help="another checkout's root (--fleet-pairs)")
    parser.add_argument(
        "--tracing-pairs",
        type=int,
        default=0,
        help="runs of the runner at concurrency 8 with tracing off and on, at 100 %% and at "
        "1 %% sampling (alternating; medians reported)",
    )
    parser.add_argument(
        "--only-tracing", action="store_true", help="run only the tracing off/on pairs"
    )
    args = parser.parse_args()
    bootstrap = os.environ.get("CONVEYOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    dsn = os.environ.get(
        "CONVEYOR_POSTGRES__DSN", "postgresql://conveyor:conveyor@127.0.0.1:5432/conveyor"
    )
    n = args.messages
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    asyncio.run(migrate(dsn))

    def rate(**options: Any) -> Callable[[], float]:
        return lambda: conveyor_rate(bootstrap, dsn, n, 8, workdir, **options)

    print(f"\nno-op throughput, {n} messages, {PARTITIONS} partitions (msg/s):", flush=True)
    if args.fleet_pairs:
        if args.baseline is None or not (args.baseline / "streams").is_dir():
            parser.error("--fleet-pairs needs --baseline, a checkout's root")
        paired(
            "this checkout / baseline at concurrency 8",
            (rate(guard=True, source=args.baseline.resolve()), rate(guard=True)),
            args.fleet_pairs,
        )
        return 0
    if args.only_tracing:
        tracing_pairs(rate, max(args.tracing_pairs, 1))
        return 0
    if not args.only_ordering:
        results = baselines(bootstrap, dsn, n, workdir)
        for name, value in results.items():
            print(f"  {name:40s} {value:10.0f}")
        for conc in (1, 8):
            ratio = (
                results[f"Conveyor runner, concurrency {conc}"]
                / results[f"bare Faust agent, concurrency {conc}"]
            )
            print(f"  ratio runner / bare Faust at concurrency {conc}: {ratio:.2f}")
        paired(
            "crash-loop guard on / off at concurrency 8",
            (rate(guard=False), rate(guard=True)),
            args.guard_pairs,
        )
    paired(
        f"ordering key / none at concurrency 8, {DISTINCT_KEYS} distinct keys",
        (
            rate(guard=True, ordering="none", keys=DISTINCT_KEYS),
            rate(guard=True, ordering="key", keys=DISTINCT_KEYS),
        ),
        args.ordering_pairs,
    )
    if args.tracing_pairs:
        tracing_pairs(rate, args.tracing_pairs)
    return 0


def tracing_pairs(rate: Callable[..., Callable[[], float]], pairs: int) -> None:
    """Tracing off vs on at 100 % and at 1 % sampling, each in adjacent pairs."""
    global SINK
    SINK = SpanSink()
    for sampling in (1.0, 0.01):
        before = SINK.spans
        cpu: tuple[list[float], list[float]] = ([], [])
        paired(
            f"tracing on ({sampling:.0%} sampled) / off at concurrency 8",
            (rate(guard=True, cpu_us=cpu[0]), rate(guard=True, sampling=sampling, cpu_us=cpu[1])),
            pairs,
        )
        ratios = [on / off for off, on in zip(*cpu, strict=True)]
        print(
            f"    worker CPU per message, on / off: {statistics.median(ratios):.2f} (median;"
            f" on {[round(c, 1) for c in cpu[1]]} µs, off {[round(c, 1) for c in cpu[0]]} µs)",
            flush=True,
        )
        print(f"    spans received at {sampling:.0%}: {SINK.spans - before}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
