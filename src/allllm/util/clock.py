"""UTC timestamps in the two spellings allllm writes: shard names and ISO-8601 records."""

from __future__ import annotations

import datetime as _dt


def utc_timestamp(now: _dt.datetime | None = None) -> str:
    """UTC ``YYYYmmdd_HHMMSS`` for shard names."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.astimezone(_dt.timezone.utc).strftime("%Y%m%d_%H%M%S")


def utc_iso(now: _dt.datetime | None = None) -> str:
    """UTC ISO-8601 with a ``Z`` (meta ``created``, seen records ``completed``)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
