"""CPU per sampled attempt span, in-process: the tracing code alone, no Kafka.

Runs ``--spans`` no-op attempts through the real tracing code
(``OtelTracing.record(record).attempt(job)``, entered and left: what the
runner does around a job) with tracing on at 100 % sampling, exporting
OTLP/HTTP to ``bench.throughput``'s span receiver, which runs in a child
process (its CPU is not counted) and decodes every request. Each round
builds a fresh ``OtelTracing``, runs the attempts, then ``shutdown()``
(which exports what is left) and checks that the receiver got every span.
Per span: the whole process's CPU time (user + system, all threads: the
event loop's part and the export thread's) from the first attempt to the
end of the shutdown, and the calling thread's alone (the loop's part). The
queue holds every span of a round (``tracing.queue_spans``), so none is
dropped; ``--carried`` gives each record a sampled ``traceparent`` (the
attempt is that context's child) instead of starting a trace.

Run it as a file, so the code it measures is the one on ``PYTHONPATH``
(another checkout's, for a before/after pair); it prints which it imported:

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python bench/tracing_cost.py [--rounds 7]
    PYTHONPATH=/work/main nice -n 10 .venv/bin/python bench/tracing_cost.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == HERE / "bench":
    del sys.path[0]  # run as a file: its folder's modules are not the code measured
RECEIVER = """
import sys, time
from bench.throughput import SpanSink
sink = SpanSink()
print(sink.endpoint, flush=True)
sys.stdin.read()  # until the benchmark closes it
"""


def receiver() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    child = subprocess.Popen(
        [sys.executable, "-c", RECEIVER],
        cwd=HERE,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    return child, child.stdout.readline().strip()


def received(endpoint: str) -> int:
    with urllib.request.urlopen(endpoint, timeout=10) as answer:
        return int(answer.read())


def one_round(endpoint: str, spans: int, carried: bool) -> tuple[float, float]:
    """(process CPU µs per span, calling thread's CPU µs per span)."""
    from handlers.types import Job
    from streams.otel import OtelTracing
    from streams.records import Record
    from streams.settings import Settings

    base = Settings()
    options = {"enabled": True, "endpoint": endpoint, "queue_spans": max(spans, 8192)}
    settings = base.model_copy(update={"tracing": base.tracing.model_copy(update=options)})
    headers: tuple[tuple[str, bytes], ...] = ()
    records, jobs = [], []
    for i in range(spans):
        if carried:
            parent = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01".encode()
            headers = (("traceparent", parent),)
        records.append(Record("jobs.probe", i % 3, i, f"key-{i}".encode(), b"{}", headers, None))
        jobs.append(Job(f"job-{i:08d}", "probe", 1, "org-bench", None))
    before = received(endpoint)
    tracing = OtelTracing(settings)
    started, started_thread = time.process_time(), time.thread_time()
    for record, job in zip(records, jobs, strict=True):
        with tracing.record(record).attempt(job):
            pass
    loop = time.thread_time() - started_thread
    tracing.shutdown()
    total = time.process_time() - started
    got = received(endpoint) - before
    assert got == spans, f"{got} of {spans} spans received"
    return total / spans * 1e6, loop / spans * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--carried", action="store_true", help="records carry a traceparent")
    args = parser.parse_args()
    import streams

    child, endpoint = receiver()
    try:
        one_round(endpoint, 2000, args.carried)  # warm-up: imports, caches
        figures: list[Any] = [one_round(endpoint, args.spans, args.carried)]
        for _ in range(args.rounds - 1):
            figures.append(one_round(endpoint, args.spans, args.carried))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    totals = [f[0] for f in figures]
    loops = [f[1] for f in figures]
    sys.stdout.write(
        f"code: {Path(streams.__file__).parent.parent}\n"
        f"{args.rounds} rounds of {args.spans} spans"
        f" ({'carried context' if args.carried else 'new traces'})\n"
        f"process CPU µs/span: median {statistics.median(totals):.1f}"
        f"  [{' '.join(f'{t:.1f}' for t in totals)}]\n"
        f"loop thread CPU µs/span: median {statistics.median(loops):.1f}"
        f"  [{' '.join(f'{t:.1f}' for t in loops)}]\n"
    )


if __name__ == "__main__":
    main()
