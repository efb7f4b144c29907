"""Checks of a sharded checkpoint's files that need no torch (``status`` reads checkpoints too).

The trainer state's ``layout`` lists every shard file with the size it was written at
(train/sharded_checkpoint.py); a file that is missing, of another size or whose
safetensors header does not parse makes the checkpoint unusable ("corrupt"), as a
damaged ``model.safetensors`` does in the single layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (ValueError when it is not one); no torch."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a header")
        size = int.from_bytes(head, "little")
        if size > 100 * 2**20 or size > path.stat().st_size - 8:
            raise ValueError("header length out of range")
        header = json.loads(fh.read(size))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    return header


def sharded_problem(ckpt: Path, layout: dict[str, Any]) -> str | None:
    """Why a sharded checkpoint's shard files cannot be used: each file its layout lists must be
    there, at its recorded size, with a readable header."""
    files = layout.get("files")
    if not isinstance(files, dict) or not files:
        return "trainer_state.json lists no shard files"
    for name, size in files.items():
        path = ckpt / name
        try:
            if path.stat().st_size != size:
                return f"{name}: {path.stat().st_size} bytes, {size} written"
            _safetensors_header(path)
        except FileNotFoundError:
            return f"{name} missing"
        except (OSError, ValueError) as exc:
            return f"{name} unreadable ({type(exc).__name__})"
    return None
