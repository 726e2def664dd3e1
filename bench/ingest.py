"""Ingestion through the worker: PDFs and DOCX files to completed assets, with figures.

Runs the real worker (``conveyor run``, local ``hash`` embedder) against the
running Kafka and Postgres, serving generated documents from a local HTTP
server, and measures:

- pages/s for 10/100/1000-page PDFs and words/s for 10k/100k/1M-word DOCX
  files, one asset at a time, from publishing the job to ``completed``;
- many PDFs at once versus pypdf extracting the same pages in one process
  (this process, nothing else running): the ratio of the two rates (the
  worker extracts PDF text with PDFium; its rate alone is printed too);
- a memory table: peak RSS of the extraction process, the worker and the
  whole process tree for DOCX files of 10, 40 and 200 MiB of document.xml
  and a PDF at the page cap (``--no-memory`` skips it);
- peak RSS of the worker and its extraction processes during the
  1000-page PDF (VmRSS of the process tree sampled every 20 ms; VmHWM of
  each process);
- event-loop lag while ingesting, from the worker's own ``worker.loop_lag``
  windows (a 50 ms timer's lateness; 10 s windows) and ``worker.loop_stalled``.

    eval "$(scripts/services env)"; .venv/bin/python bench/ingest.py [--many 40] [--no-memory]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pypdfium2 as pdfium
from pypdf import PdfReader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers.assets.extract import ExtractRequest, extract_to_file  # noqa: E402
from handlers.cpu_pool import ProcessCpuPool  # noqa: E402
from schemas.envelope import JobEnvelope  # noqa: E402
from streams.commands.migrate import migrate  # noqa: E402
from streams.looplag import percentile  # noqa: E402
from streams.policies import chunking_policy, extract_policy  # noqa: E402
from streams.settings import Settings  # noqa: E402
from tests.support.documents import DOCX_MIME, docx_words, formatted_docx, pdf_bytes  # noqa: E402
from tests.support.http import FileServer, file_server  # noqa: E402
from tests.support.stack import Stack  # noqa: E402
from tests.support.worker import WorkerProcess  # noqa: E402

CHUNKING = chunking_policy(Settings())
EXTRACT = extract_policy(Settings())

CACHE = Path(tempfile.gettempdir()) / "conveyor-bench-docs"
WORDS_PER_PAGE = 400
PDF = "application/pdf"


def cached(name: str, make: object) -> bytes:
    """Generated documents are kept between runs: a 1000-page PDF takes fpdf2 ~20 s."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / name
    if not path.exists():
        assert callable(make)
        path.write_bytes(make())
    return path.read_bytes()


def pdf(pages: int) -> bytes:
    return cached(f"pdf-{pages}.pdf", lambda: pdf_bytes(pages, WORDS_PER_PAGE))


def docx(words: int) -> bytes:
    return cached(f"docx-{words}.docx", lambda: docx_words(words))


def formatted(xml_mib: int) -> bytes:
    return cached(f"docx-xml-{xml_mib}mib.docx", lambda: formatted_docx(xml_mib))


# --- process tree memory --------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSplit:
    """Where CPU time went between two snapshots."""

    worker: float
    extraction: float
    rest_of_machine: float


def cpu_snapshot(worker_pid: int) -> tuple[float, float, float]:
    children = sum(cpu_s(pid) for pid in descendants(worker_pid))
    return cpu_s(worker_pid), children, machine_busy_s()


def cpu_split(before: tuple[float, float, float], after: tuple[float, float, float]) -> CpuSplit:
    worker, children, machine = (a - b for a, b in zip(after, before, strict=True))
    return CpuSplit(worker, children, machine - worker - children)


class TreeMemory:
    """Samples the summed VmRSS of a process and its descendants in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_sum = 0
        self.hwm: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        for pid in [self.pid, *descendants(self.pid)]:  # VmHWM from now on (Linux >= 4.0)
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in [self.pid, *descendants(self.pid)]:
                status = _status(pid)
                total += status.get("VmRSS", 0)
                self.hwm[pid] = max(self.hwm.get(pid, 0), status.get("VmHWM", 0))
            self.peak_sum = max(self.peak_sum, total)
            time.sleep(0.02)


# --- running assets through the worker ------------------------------------------------


@dataclass
class Bench:
    stack: Stack
    db: asyncpg.Pool
    files: FileServer
    worker: WorkerProcess
    run: str

    async def ingest(self, docs: list[tuple[str, bytes, str]]) -> float:
        """Publish one job per document at once; seconds until all are completed."""
        ids = []
        for name, body, mime in docs:
            asset_id = f"bench-{self.run}-{name}"
            url = self.files.add(f"{self.run}-{name}", body, "application/octet-stream")
            await self.db.execute(
                "INSERT INTO assets (id, organization_id, source_url, mime_type)"
                " VALUES ($1, 'org-bench', $2, $3)",
                asset_id,
                url,
                mime,
            )
            ids.append(asset_id)
        jobs = [
            JobEnvelope(id=str(uuid.uuid4()), type="asset.process", payload={"asset_id": a})
            for a in ids
        ]
        started = time.perf_counter()
        self.stack.publish(jobs)
        while True:
            rows = await self.db.fetch(
                "SELECT id, status, error FROM assets WHERE id = ANY($1)", ids
            )
            failed = [r for r in rows if r["status"] == "failed"]
            if failed:
                raise RuntimeError(f"asset failed: {dict(failed[0])}")
            if all(r["status"] == "completed" for r in rows):
                return time.perf_counter() - started
            await asyncio.sleep(0.05)

    def lag_windows(self, since: int) -> list[dict[str, float]]:
        return [e for e in self.worker.events[since:] if e.get("event") == "worker.loop_lag"]


def pypdf_alone(bodies: list[bytes], workdir: Path) -> tuple[float, int]:
    """Pages per second of plain pypdf ``extract_text`` in this one process, and words."""
    paths = []
    for i, body in enumerate(bodies):
        path = workdir / f"alone-{i}.pdf"
        path.write_bytes(body)
        paths.append(path)
    pages = words = 0
    started = time.perf_counter()
    for path in paths:
        for page in PdfReader(path).pages:
            words += len(page.extract_text().split())
            pages += 1
    return pages / (time.perf_counter() - started), words


def pdfium_alone(bodies: list[bytes], workdir: Path) -> float:
    """Pages per second of PDFium's text extraction in this one process (what the worker uses)."""
    paths = []
    for i, body in enumerate(bodies):
        path = workdir / f"pdfium-{i}.pdf"
        path.write_bytes(body)
        paths.append(path)
    pages = 0
    started = time.perf_counter()
    for path in paths:
        document = pdfium.PdfDocument(str(path))
        for index in range(len(document)):
            page = document[index]
            textpage = page.get_textpage()
            textpage.get_text_bounded()
            textpage.close()
            page.close()
            pages += 1
        document.close()
    return pages / (time.perf_counter() - started)


async def pool_alone(bodies: list[bytes], workdir: Path) -> float:
    """Pages per second of ``extract_to_file`` through the pool, 4 documents in flight."""
    pool = ProcessCpuPool(2, preload=["handlers.assets.extract"])
    await pool.start()
    paths = []
    for i, body in enumerate(bodies):
        path = workdir / f"pool-{i}.pdf"
        path.write_bytes(body)
        paths.append(path)
    gate = asyncio.Semaphore(4)

    async def one(path: Path) -> int:
        async with gate:
            out = str(path.with_suffix(".jsonl"))
            request = ExtractRequest(str(path), PDF, out, EXTRACT, CHUNKING.size, CHUNKING.overlap)
            summary = await pool.run(extract_to_file, request, timeout_s=120)
            return summary.page_count or 0

    started = time.perf_counter()
    pages = sum(await asyncio.gather(*(one(p) for p in paths)))
    elapsed = time.perf_counter() - started
    pool.shutdown()
    return pages / elapsed


def mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


async def run(args: argparse.Namespace) -> None:
    bootstrap = os.environ.get("CONVEYOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    dsn = os.environ.get(
        "CONVEYOR_POSTGRES__DSN", "postgresql://conveyor:conveyor@127.0.0.1:5432/conveyor"
    )
    await migrate(dsn)
    print("generating documents (cached in", CACHE, ")", flush=True)
    pdfs = {n: pdf(n) for n in (10, 100, 1000)}
    docxs = {n: docx(n) for n in (10_000, 100_000, 1_000_000)}
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    stack = Stack(bootstrap, dsn)
    stack.create_topics()
    db = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    worker = WorkerProcess(
        {**stack.env, "CONVEYOR_DLQ_MIRROR__ENABLED": "false"}, workdir / "worker.log"
    ).start()
    run_id = uuid.uuid4().hex[:6]
    try:
        async with file_server() as files:
            worker.wait_ready()
            assert worker.proc is not None
            bench = Bench(stack, db, files, worker, run_id)
            await report(bench, args, pdfs, docxs, workdir, worker.proc.pid)
    finally:
        worker.stop()
        await db.execute("DELETE FROM assets WHERE id LIKE $1", f"bench-{run_id}-%")
        await db.close()
    print(f"\nworker log: {workdir / 'worker.log'}")


async def report(
    bench: Bench,
    args: argparse.Namespace,
    pdfs: dict[int, bytes],
    docxs: dict[int, bytes],
    workdir: Path,
    worker_pid: int,
) -> None:
    first_event = len(bench.worker.events)
    lag_1000 = await one_at_a_time(bench, pdfs, docxs, worker_pid)
    if args.memory:
        await memory_table(bench, worker_pid)
    events_before = len(bench.worker.events)
    await many_at_once(bench, pdfs[100], args.many, workdir, worker_pid)
    lag_many = bench.lag_windows(events_before)
    print(
        "\nevent-loop lag while ingesting (the worker's 10 s worker.loop_lag windows from the"
        f" first job to the end of the many-PDF run; {len(lag_1000)} ended during the"
        f" 1000-page PDF, {len(lag_many)} during the many-PDF run):"
    )
    windows = bench.lag_windows(first_event)
    if windows:
        p99s = [w["p99_ms"] for w in windows]
        print(
            f"  windows: {len(windows)}; p99 per window: max {max(p99s):.1f} ms,"
            f" median {percentile(p99s, 50):.1f} ms; max single lag"
            f" {max(w['max_ms'] for w in windows):.1f} ms"
        )
    stalls = [e for e in bench.worker.events if e.get("event") == "worker.loop_stalled"]
    print(f"  stalls over 100 ms during the whole run: {len(stalls)}")


async def one_at_a_time(
    bench: Bench, pdfs: dict[int, bytes], docxs: dict[int, bytes], worker_pid: int
) -> list[dict[str, float]]:
    """Each document alone; memory sampled during the 1000-page PDF, whose lag windows return."""
    print("\none asset at a time, publish → completed:")
    lag_1000: list[dict[str, float]] = []
    memory = TreeMemory(worker_pid)
    for pages, body in pdfs.items():
        events_before = len(bench.worker.events)
        if pages == 1000:
            with memory:
                elapsed = await bench.ingest([(f"pdf{pages}", body, PDF)])
            lag_1000 = bench.lag_windows(events_before)
        else:
            elapsed = await bench.ingest([(f"pdf{pages}", body, PDF)])
        words = pages * WORDS_PER_PAGE
        print(
            f"  PDF {pages:5d} pages  {elapsed:7.2f} s  {pages / elapsed:7.1f} pages/s"
            f"  {words / elapsed:9.0f} words/s  ({len(body) / 2**20:.2f} MB file)"
        )
    for words, body in docxs.items():
        elapsed = await bench.ingest([(f"docx{words}", body, DOCX_MIME)])
        print(
            f"  DOCX {words:8d} words  {elapsed:7.2f} s  {words / elapsed:9.0f} words/s"
            f"  ({len(body) / 2**20:.2f} MB file)"
        )
    print("\npeak memory while ingesting the 1000-page PDF:")
    others = {pid: hwm for pid, hwm in memory.hwm.items() if pid != worker_pid}
    print(f"  sum of VmRSS over worker + extraction processes: {mb(memory.peak_sum)}")
    print(
        f"  VmHWM worker: {mb(memory.hwm.get(worker_pid, 0))};"
        f" children: {', '.join(mb(v) for v in sorted(others.values(), reverse=True))}"
    )
    return lag_1000


async def memory_table(bench: Bench, worker_pid: int) -> None:
    """Peak RSS per process and of the whole worker for the largest documents the guards take."""
    cases = [
        (f"DOCX, document.xml {n} MiB", f"docxmem{n}", formatted(n), DOCX_MIME)
        for n in (10, 40, 200)
    ]
    cap = EXTRACT.max_pages
    cases.append((f"PDF, {cap} pages (the page cap)", "pdfcap", pdf(cap), PDF))
    print(
        "\npeak memory, one document at a time (VmHWM of each process; summed VmRSS of the"
        " worker and its descendants, sampled every 20 ms):"
    )
    print("  | document | file | elapsed | extraction process | worker | whole worker |")
    for label, name, body, mime in cases:
        memory = TreeMemory(worker_pid)
        with memory:
            elapsed = await bench.ingest([(name, body, mime)])
        children = [v for pid, v in memory.hwm.items() if pid != worker_pid]
        print(
            f"  | {label} | {len(body) / 2**20:.1f} MB | {elapsed:.1f} s | {mb(max(children))} |"
            f" {mb(memory.hwm.get(worker_pid, 0))} | {mb(memory.peak_sum)} |",
            flush=True,
        )


async def many_at_once(
    bench: Bench, body: bytes, count: int, workdir: Path, worker_pid: int
) -> None:
    """``count`` 100-page PDFs at once against pypdf alone, with where the CPU went."""
    cpu_before = cpu_snapshot(worker_pid)
    elapsed = await bench.ingest([(f"many{i}", body, PDF) for i in range(count)])
    split = cpu_split(cpu_before, cpu_snapshot(worker_pid))
    pages = count * 100
    rate = pages / elapsed
    alone, _ = pypdf_alone([body] * count, workdir)
    pdfium = pdfium_alone([body] * count, workdir)
    print(f"\n{count} x 100-page PDFs at once: {elapsed:.2f} s, {rate:.1f} pages/s")
    print(f"  pypdf extract_text alone, one process, same pages: {alone:.1f} pages/s")
    print(f"  PDFium (pypdfium2) alone, one process, same pages: {pdfium:.1f} pages/s")
    print(f"  ratio worker / pypdf alone: {rate / alone:.2f}")
    per_page = [v / pages * 1000 for v in (split.worker, split.extraction, split.rest_of_machine)]
    print(
        f"  CPU per page: worker process (event loop: embed, insert) {per_page[0]:.2f} ms,"
        f" extraction processes {per_page[1]:.2f} ms, rest of the machine"
        f" (Postgres, Kafka, others) {per_page[2]:.2f} ms; pypdf alone {1000 / alone:.2f} ms"
    )
    cores = os.cpu_count() or 1
    ceiling = cores / sum(per_page) * 1000
    print(
        f"  ceiling on {cores} cores at that CPU cost: {ceiling:.1f} pages/s"
        f" = {ceiling / alone:.2f} x pypdf alone"
    )
    pool_rate = await pool_alone([body] * count, workdir)
    print(
        f"  extraction stage alone (ProcessCpuPool, 2 processes, this process as parent):"
        f" {pool_rate:.1f} pages/s = {pool_rate / alone:.2f} x pypdf alone"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--many", type=int, default=40, help="100-page PDFs ingested at once")
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the memory table (DOCX up to 200 MiB of XML, PDF at the page cap)",
    )
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
