"""Sentry: initialised only when a DSN is set; one event per dead-lettered job."""

from __future__ import annotations

import sentry_sdk

from handlers import tracing
from streams import __version__
from streams.publish import Failure
from streams.settings import SentrySettings

_enabled = False


def init(settings: SentrySettings) -> None:
    global _enabled
    if settings.dsn is None:
        return
    sentry_sdk.init(
        dsn=settings.dsn.get_secret_value(),
        environment=settings.environment,
        release=f"conveyor@{__version__}",
        send_default_pii=False,
        max_request_body_size="never",
        default_integrations=False,
    )
    _enabled = True


def dead_lettered(failure: Failure) -> None:
    """Report a dead-lettered job: tags only, never the payload."""
    if not _enabled:
        return
    with sentry_sdk.new_scope() as scope:
        ids = tracing.ids()  # the attempt's span: the event names the job's trace
        if ids is not None:
            scope.set_tag("trace_id", ids[0])
            scope.set_context("trace", {"trace_id": ids[0], "span_id": ids[1]})
        scope.set_tag("job_type", failure.job_type or "unknown")
        scope.set_tag("stage", failure.stage.value)
        scope.set_tag("error_class", type(failure.error).__name__)
        scope.fingerprint = [
            failure.job_type or "unknown",
            failure.stage.value,
            type(failure.error).__name__,
        ]
        sentry_sdk.capture_message(
            f"job dead-lettered: {failure.job_type} ({failure.stage.value}, "
            f"{type(failure.error).__name__})",
            level="error",
        )
