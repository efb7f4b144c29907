"""Append-only JSON-lines files (metrics, runs): one object a line, torn lines skipped on read.

A crash can tear the last line of an append-only file; readers skip a line
that does not parse instead of failing, and writers only ever append.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def append_jsonl(path: Path, record: dict[str, Any], durable: bool = False) -> None:
    """Append one object as a line; ``durable`` fsyncs it (records that must survive a crash)."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        if durable:
            fh.flush()
            os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every well-formed line of a jsonl file (a line torn by a crash is skipped)."""
    out = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict):
                    out.append(item)
    except FileNotFoundError:
        return []
    return out
