"""A rebuilt shard that is a shard we already have (``tokenize --force`` on unchanged text).

``shard_id`` is the token stream's digest, so a rebuild of unchanged sources has
the id of the live shard it would replace, and no meta ``supersedes`` can say
"replaces an older shard of my own id": kept beside it, the two are one shard
and ``status`` calls one of them a ``duplicate``. So once a shard is finished
(its files in place, still journaled), it is compared with the live shards of
the same settings that have its id and the same source records
(path, size, sha256, byte range):

- one that passes its checks, digests included, and has every file format the
  rebuild wrote: the rebuild is *discarded* (removed through its journal entry)
  and that shard reported ``unchanged``;
- otherwise (corrupt or truncated files, a broken meta, or a format the run adds,
  as ``--force --bin`` over ``.jsonl``-only shards, or the ``.docs`` sidecar over a
  shard made before it existed): the rebuild is committed and
  those older shards are *replaced*: journaled for removal before the rebuild
  becomes visible, then removed, so a kill at any moment leaves one of them, or
  only journaled files the next tokenize removes (and the source then counts as new).

A shard of the same id but other sources (a copy of a file, an edit the tokenizer
does not see) is not the same shard's rebuild: it stays, as before, a duplicate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from allllm.data.registry import ScanSpec, inspect_one
from allllm.data.shard_format import DATA_SUFFIXES, DOCS_SUFFIX, META_SUFFIX, ShardMeta
from allllm.data.tokenize import journal
from allllm.data.tokenize.plan import ExistingShard, identity_of_meta_path
from allllm.data.tokenize.write import ShardWriter

SourceKey = tuple[str, int, str, tuple[int, ...], tuple[bool, ...]]


@dataclass
class Verdict:
    """What became of one finished shard."""

    unchanged: str | None = None  # stem of the live shard that already holds it (discarded)
    replaced: list[str] = field(default_factory=list)  # stems of same-id shards it replaced


class RebuildCheck:
    """Matches each finished shard of a run against the live shards the plan started from."""

    def __init__(
        self,
        data_dir: Path,
        live: Iterable[ExistingShard],
        spec: ScanSpec,
        cwd: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.spec = spec
        self.cwd = cwd
        self._by_id: dict[str, list[ExistingShard]] = {}
        for shard in live:
            self._by_id.setdefault(shard.meta.shard_id, []).append(shard)

    def _sources(self, meta: ShardMeta) -> list[SourceKey]:
        return [
            (
                identity_of_meta_path(s.path, self.cwd),
                s.size,
                s.sha256,
                tuple(s.byte_range),
                tuple(s.inside_document),
            )
            for s in meta.sources
        ]

    def judge(self, meta: ShardMeta) -> tuple[ExistingShard | None, list[ExistingShard]]:
        """(the live shard to keep instead of ``meta``'s, the live shards ``meta``'s replaces)."""
        same = [
            s
            for s in self._by_id.get(meta.shard_id, [])
            if self._sources(s.meta) == self._sources(meta)
        ]
        broken = []
        for shard in same:
            entry = inspect_one(self.data_dir, shard.stem, self.spec, verify=True)
            if entry is None or "meta" not in entry.files:
                continue  # gone, or its meta went since the plan: nothing of ours to act on
            good = entry.state == "new" and entry.shard_id == meta.shard_id
            if good and entry.meta is not None and _holds_all_of(entry.meta, meta):
                return shard, []
            broken.append(shard)
        return None, broken


def _holds_all_of(live: ShardMeta, rebuild: ShardMeta) -> bool:
    """The live shard has every file the rebuild wrote: its formats, and a ``.docs`` too."""
    has_docs = live.documents is not None or rebuild.documents is None
    return set(live.files) >= set(rebuild.files) and has_docs


def _shard_files(shard: ExistingShard) -> list[str]:
    """The files of an existing shard: the data files its meta lists, its ``.docs`` when meta
    names one, then the meta."""
    data = [
        f"{shard.stem}{DATA_SUFFIXES[role]}" for role in shard.meta.files if role in DATA_SUFFIXES
    ]
    if shard.meta.documents is not None:
        data.append(f"{shard.stem}{DOCS_SUFFIX}")
    return [*data, f"{shard.stem}{META_SUFFIX}"]


def settle(writer: ShardWriter, meta: ShardMeta, check: RebuildCheck) -> Verdict:
    """Commit the finished shard of ``writer``, or discard it where a live shard holds it.

    Every step goes through the journal (module doc), so a kill anywhere never leaves two
    visible shards of one id nor a half-removed one.
    """
    keep, replaced = check.judge(meta)
    if keep is not None:
        writer.abort()
        return Verdict(unchanged=keep.stem)
    data_dir = writer.data_dir
    marked: list[str] = []
    try:
        for shard in replaced:
            try:
                journal.begin(data_dir, shard.stem, _shard_files(shard))
            except OSError as exc:
                writer.fail(exc)
            marked.append(shard.stem)
        writer.commit()
    except BaseException:
        visible = (data_dir / f"{writer.stem}{META_SUFFIX}").exists() and (
            writer.stem not in journal.journaled_stems(data_dir)
        )
        if not visible:  # the rebuild never became a shard: the old ones stay
            for stem in marked:
                with contextlib.suppress(OSError):
                    journal.end(data_dir, stem)
        raise
    for stem in marked:  # journaled already: invisible, and a failure here is the next run's
        with contextlib.suppress(OSError):
            journal.remove_listed_files(data_dir, stem)
    return Verdict(replaced=marked)
