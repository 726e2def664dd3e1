"""structlog everywhere: JSON lines in production, console in development.

The standard-library loggers of Faust, mode, aiokafka and asyncpg are routed
through the same processors, and known secret values are masked in every
event before it is rendered.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

from handlers import tracing
from streams.redact import Redactor
from streams.settings import LoggingSettings

NOISY = ("aiokafka", "faust", "mode", "asyncio", "kafka")

#: The running job's log context (topic, partition, offset, job_type, job_id,
#: attempt). One ContextVar holding a dict: setting it once per job is far
#: cheaper than structlog's one-variable-per-key binding.
JOB_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("conveyor_job_context", default=None)


def bind_job(**values: Any) -> None:
    """Add ``values`` to the running job's log context."""
    JOB_CONTEXT.set({**(JOB_CONTEXT.get() or {}), **values})


def merge_job_context(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    context = JOB_CONTEXT.get()
    if context:
        for key, value in context.items():
            event.setdefault(key, value)
    return event


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The current span's ``trace_id`` and ``span_id`` (installed only with tracing on)."""
    found = tracing.ids()
    if found is not None:
        event.setdefault("trace_id", found[0])
        event.setdefault("span_id", found[1])
    return event


_PLAIN = (int, float, bool, type(None))


class SecretMasker:
    """A processor that masks secrets wherever they sit in an event.

    Strings at any depth (dicts, lists, tuples), exception objects and any
    other object (rendered as its ``repr``, as the renderer would) are
    masked: configured secret values, bearer tokens and passwords in URLs.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self.mask = Redactor(secrets)

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if not isinstance(value, _PLAIN):
                event[key] = self._masked(value)
        return event

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, dict):
            return {k: self._masked(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._masked(v) for v in value]
        return self.mask(repr(value))


def configure(
    settings: LoggingSettings, secrets: Iterable[str] = (), *, trace_ids: bool = False
) -> None:
    """``trace_ids``: every line written inside a span carries its trace and span ids."""
    masker = SecretMasker(secrets)
    level = getattr(logging, settings.level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        merge_job_context,
        *([add_trace_ids] if trace_ids else []),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        masker,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Calls below the level return at once, before any processor runs.
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    library_level = getattr(logging, settings.library_level.upper())
    for name in NOISY:
        logging.getLogger(name).setLevel(library_level)
