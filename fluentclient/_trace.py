"""The current OpenTelemetry span's ids, for the log integrations to add to each record.

OpenTelemetry is never imported here: an application that traces has imported
``opentelemetry.trace`` already (its SDK and every instrumentation do), and one that
does not pays one dictionary lookup per record. The ids are read on the thread that
logs, where the application's span is current.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["TRACE_ID", "SPAN_ID", "current_ids", "put_ids"]

# The names the OpenTelemetry log data model gives them (LogRecord.trace_id and span_id,
# as OTLP and the SDK's log bridge carry them), in the lowercase hex W3C traceparent
# uses: 32 and 16 digits.
TRACE_ID = "trace_id"
SPAN_ID = "span_id"
_API = "opentelemetry.trace"


def current_ids() -> tuple[str, str] | None:
    """The trace and span id of the span current on this thread, or None when
    OpenTelemetry is not in use, no span is current, or reading it fails."""
    trace = sys.modules.get(_API)
    if trace is None:
        return None
    try:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")
    except Exception:  # a broken or half-imported tracer must never cost the log line
        return None


def put_ids(
    record: dict[str, Any], ids: tuple[str, str], fields: Mapping[str, str | None] | None = None,
) -> None:
    """Put ``ids`` into ``record`` under their names, renamed or dropped by ``fields`` as
    the integration's other fields are, unless the record has a value there already: the
    caller's own wins."""
    for key, value in zip((TRACE_ID, SPAN_ID), ids):
        name = fields.get(key, key) if fields else key
        if name is not None and name not in record:
            record[name] = value
