"""Which meta files ``data.anchor`` names (a glob relative to the workspace; ``**`` recurses).

Kept apart from :mod:`allllm.data.anchor` so the registry can mark the anchor
shards of the data dir without importing what builds on it.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from allllm.data.shard_format import META_SUFFIX


def anchor_meta_paths(pattern: str) -> list[Path]:
    """The meta files ``pattern`` matches (sorted; resolved, so two spellings are one file)."""
    found = {
        Path(p).resolve()
        for p in glob.glob(pattern, recursive=True)
        if p.endswith(META_SUFFIX) and os.path.isfile(p)
    }
    return sorted(found)


def anchor_in_data_dir(data_dir: Path, pattern: str | None) -> set[str]:
    """Stems in ``data_dir`` whose meta ``pattern`` names (the registry marks them anchor-only)."""
    if not pattern:
        return set()
    root = data_dir.resolve()
    return {p.name[: -len(META_SUFFIX)] for p in anchor_meta_paths(pattern) if p.parent == root}
