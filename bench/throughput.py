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
(``max_crashes=0``) and on, in adjacent pairs, and prints the median ratio.

    .venv/bin/python -m bench.throughput [--messages 100000] [--guard-pairs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.envelope import JobEnvelope  # noqa: E402
from streams.commands.migrate import migrate  # noqa: E402
from tests.support.stack import Stack  # noqa: E402

PARTITIONS = 3
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


def measure(
    bootstrap: str,
    group: str,
    topic: str,
    total: int,
    start: Callable[[], object],
    stop: Callable[[object], None],
    timeout_s: float = 300,
) -> float:
    conf = {"bootstrap.servers": bootstrap}
    handle = start()
    try:
        deadline = time.monotonic() + timeout_s
        t10 = None
        while True:
            done = committed(conf, group, topic)
            now = time.monotonic()
            if t10 is None and done >= total * 0.1:
                t10, d10 = now, done
            if done >= total:
                assert t10 is not None
                return (done - d10) / max(now - t10, 1e-9)
            if now > deadline:
                raise RuntimeError(f"{group}: only {done}/{total} committed in {timeout_s} s")
            time.sleep(0.05)
    finally:
        stop(handle)


def publish(bootstrap: str, topic: str, total: int, job: bool) -> None:
    prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for i in range(total):
        value = (
            JobEnvelope(id=f"b-{i}", type="probe", payload={"record": False}).to_bytes()
            if job
            else b'{"noop": true}'
        )
        prod.produce(topic, value, str(i).encode())
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


def run_conveyor(
    stack: Stack, concurrency: int, workdir: Path, guard: bool = True
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **stack.env,
        "CONVEYOR_JOBS__PROBE__ENABLED": "true",
        "CONVEYOR_JOBS__PROBE__CONCURRENCY": str(concurrency),
        "CONVEYOR_LOGGING__LEVEL": "warning",
        "CONVEYOR_DLQ_MIRROR__ENABLED": "false",
    }
    if not guard:  # the runner without its start journal (the crash-loop guard off)
        env["CONVEYOR_JOBS__PROBE__MAX_CRASHES"] = "0"
    log = (workdir / f"conveyor-{concurrency}-{stack.prefix}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "streams.commands.cli", "run"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def conveyor_rate(
    bootstrap: str, dsn: str, n: int, concurrency: int, workdir: Path, *, guard: bool
) -> float:
    stack = Stack(bootstrap, dsn)
    stack.create_topics()
    topic = stack.registry().topic_for("probe")
    publish(bootstrap, topic, n, job=True)
    return measure(
        bootstrap,
        f"{stack.prefix}-group",
        topic,
        n,
        lambda: run_conveyor(stack, concurrency, workdir, guard),
        terminate,
    )


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
    args = parser.parse_args()
    bootstrap = os.environ.get("CONVEYOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    dsn = os.environ.get(
        "CONVEYOR_POSTGRES__DSN", "postgresql://conveyor:conveyor@127.0.0.1:5432/conveyor"
    )
    n = args.messages
    admin = AdminClient({"bootstrap.servers": bootstrap})
    results: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))

    def fresh_topic(name: str) -> str:
        futures = admin.create_topics([NewTopic(name, PARTITIONS, 1)])
        for f in futures.values():
            f.result()
        return name

    asyncio.run(migrate(dsn))
    run_id = uuid.uuid4().hex[:6]
    t = fresh_topic(f"bench-{run_id}-raw")
    publish(bootstrap, t, n, job=False)
    g = f"bench-{run_id}-raw"
    results["raw confluent-kafka"] = raw_rate(bootstrap, t, g, n)
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
    guard: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.guard_pairs):
        for on in (False, True):
            guard[on].append(conveyor_rate(bootstrap, dsn, n, 8, workdir, guard=on))
    results["Conveyor runner, concurrency 8, guard off"] = statistics.median(guard[False])
    results["Conveyor runner, concurrency 8, guard on"] = statistics.median(guard[True])
    print(f"\nno-op throughput, {n} messages, {PARTITIONS} partitions (msg/s):")
    for name, rate in results.items():
        print(f"  {name:40s} {rate:10.0f}")
    for conc in (1, 8):
        ratio = (
            results[f"Conveyor runner, concurrency {conc}"]
            / results[f"bare Faust agent, concurrency {conc}"]
        )
        print(f"  ratio runner / bare Faust at concurrency {conc}: {ratio:.2f}")
    pairs = [on / off for on, off in zip(guard[True], guard[False], strict=True)]
    print(
        f"  ratio crash-loop guard on / off at concurrency 8: {statistics.median(pairs):.2f}"
        f" (median of {len(pairs)} adjacent pair(s): {[round(r, 2) for r in pairs]};"
        f" on {[round(r) for r in guard[True]]}, off {[round(r) for r in guard[False]]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
