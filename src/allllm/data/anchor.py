"""Anchor shards (``data.anchor``): a general corpus mixed into every run, never trained as new data.

``data.anchor`` is a glob of shard metas anywhere in the workspace (relative
to it; ``**`` recurses), for example a FineWeb sample tokenized with the same
tokenizer into ``anchor/``. Each shard it names is checked exactly as a data
shard is (meta, sizes, seq_len, tokenizer fingerprint, the settings that decide
ids): an invalid one is listed with its reason and never drawn. Anchor shards
are ``anchor_only``: never new data, never in the seen map, never lending
validation rows; inside ``data.dir`` the registry marks them so. A shard named
by both ``data.anchor`` and ``data.eval_shards`` is a config error (the
anchor trains, an eval shard must never be trained).

The rows a run draws come from the anchor pool (:mod:`allllm.data.anchor_pool`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from allllm.data.anchor_glob import anchor_meta_paths
from allllm.data.dataset import ShardSource
from allllm.data.registry import ScanResult, ScanSpec, ShardEntry, inspect_one
from allllm.data.shard_format import META_SUFFIX
from allllm.errors import ConfigError


@dataclass
class AnchorShard:
    """One shard ``data.anchor`` names, with the directory its files are in."""

    entry: ShardEntry
    directory: Path

    @property
    def usable(self) -> bool:
        return self.entry.state in ("new", "seen") and bool(self.entry.n_rows)

    @property
    def meta_path(self) -> Path:
        return self.directory / f"{self.entry.name}{META_SUFFIX}"

    def source(self) -> ShardSource:
        return self.entry.source(self.directory)


def check_not_eval(entry_names: list[str], eval_glob: str | None, pattern: str) -> None:
    """A shard matched by both ``data.anchor`` and ``data.eval_shards`` is a config error."""
    if not eval_glob:
        return
    for name in entry_names:
        if fnmatch.fnmatchcase(name, eval_glob):
            raise ConfigError(
                f"shard {name} matches both data.anchor ({pattern!r}) and data.eval_shards "
                f"({eval_glob!r})",
                "an eval shard is never trained: make the two globs disjoint",
            )


def find_anchor(spec: ScanSpec, scan: ScanResult) -> list[AnchorShard]:
    """Every shard ``spec.anchor_glob`` names: those in the data dir as ``scan`` found them,
    the others checked on their own; one per ``shard_id`` (the first by path)."""
    pattern = spec.anchor_glob
    if not pattern:
        return []
    data_dir = scan.data_dir.resolve()
    in_data = {e.name: e for e in scan.shards if e.anchor_only}
    shards: list[AnchorShard] = []
    ids: set[str] = set()
    for meta in anchor_meta_paths(pattern):
        stem = meta.name[: -len(META_SUFFIX)]
        if meta.parent == data_dir and stem in in_data:
            shard = AnchorShard(in_data[stem], scan.data_dir)
        else:
            entry = inspect_one(meta.parent, stem, spec, verify=False)
            if entry is None:
                continue
            shard = AnchorShard(entry, meta.parent)
        check_not_eval([shard.entry.name, *shard.entry.files.values()], spec.eval_glob, pattern)
        sid = shard.entry.shard_id
        if sid and shard.usable:
            if sid in ids:
                continue  # the same tokens under another name
            ids.add(sid)
        shards.append(shard)
    return shards
