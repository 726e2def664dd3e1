"""Regenerate the binary demo samples in docs/samples (a PDF and a DOCX).

The files are committed so `make demo` needs nothing beyond the service's own
dependencies; this script (which needs the dev extras: fpdf2, python-docx) is
how they were made. Run: .venv/bin/python scripts/make_samples.py
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import docx
from fpdf import FPDF
from fpdf.enums import XPos, YPos

SAMPLES = Path(__file__).resolve().parent.parent / "docs" / "samples"
FIXED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

PDF_PAGES = [
    (
        "Operations guide: deploying Conveyor",
        "Conveyor runs as a Kafka consumer group. Every replica joins the same group, "
        "and Kafka spreads the partitions of each job topic across them. Scaling out "
        "means adding replicas up to the number of partitions; more replicas than "
        "partitions leave some idle. A rolling deploy sends SIGTERM to one replica at "
        "a time: it stops fetching, finishes its in-flight jobs within the drain "
        "timeout, commits what finished and exits with code 0.",
    ),
    (
        "Dead letters",
        "A job that fails permanently, or runs out of attempts, is written to the "
        "dead-letter topic with its original key, value and headers, plus the reason "
        "it failed, the stage at which it failed and the number of attempts. A mirror "
        "agent copies every dead-letter record into the worker_dlq table so operators "
        "can search them with SQL. Replaying a dead letter publishes it again to its "
        "original topic once the cause is fixed.",
    ),
    (
        "Capacity",
        "Document ingestion is bound by extraction on the CPU and by the embedding "
        "provider's rate limit. Extraction runs in a pool of processes, one per core "
        "by default, so the event loop keeps serving other jobs while a large PDF is "
        "parsed. Embedding requests share one limiter per process and one per "
        "organization, and a 429 answer pauses every job of the process together.",
    ),
]

DOCX_SECTIONS = [
    (
        "Runbook: a job is stuck",
        "Check the job's asset row first: its status, progress and error say where it is.",
        ["status processing with rising progress: it is running", "status failed: read error"],
    ),
    (
        "Consumer lag grows",
        "Lag that grows on one partition only usually means one slow job at its head.",
        ["look for worker.job.timeout lines", "raise the job type's timeout_s if justified"],
    ),
    (
        "Postgres is down",
        "The worker waits for Postgres without spending attempts and resumes when it returns.",
        ["no job is dead-lettered because of an outage", "the DLQ mirror catches up on its own"],
    ),
]


def make_pdf(path: Path) -> None:
    pdf = FPDF()
    pdf.set_creation_date(FIXED)
    for title, body in PDF_PAGES:
        pdf.add_page()
        pdf.set_font("helvetica", style="B", size=16)
        pdf.multi_cell(0, 10, title, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("helvetica", size=11)
        pdf.multi_cell(0, 6, body, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.output(str(path))


def make_docx(path: Path) -> None:
    document = docx.Document()
    document.core_properties.created = FIXED
    document.core_properties.modified = FIXED
    for title, body, items in DOCX_SECTIONS:
        document.add_heading(title, level=1)
        document.add_paragraph(body)
        for item in items:
            document.add_paragraph(item, style="List Bullet")
    document.save(str(path))


def main() -> None:
    make_pdf(SAMPLES / "operations-guide.pdf")
    make_docx(SAMPLES / "runbook.docx")


if __name__ == "__main__":
    main()
