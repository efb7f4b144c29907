"""What a registry scan hands out: the shard entries, their states, and the scan's result.

Kept apart from the scan itself (``registry.py``) so that the types every
consumer uses — status, train, eval — read in one place; ``registry`` re-exports
them. A ``ShardEntry`` is one stem's files and its state for one config; a
``ScanSpec`` is what a shard must match to be usable by that config.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from allllm.data.digest_cache import DigestCache
from allllm.data.seen import SeenRecord
from allllm.data.shard_format import DOCS_SUFFIX, ShardMeta, file_sha256
from allllm.errors import DataError

if TYPE_CHECKING:
    from allllm.config import Config
    from allllm.data.dataset import ShardSource

ShardState = Literal["new", "seen", "invalid", "unverified", "superseded", "duplicate", "missing"]
STATES: tuple[ShardState, ...] = (
    "new", "seen", "invalid", "unverified", "superseded", "duplicate", "missing",
)  # fmt: skip


@dataclass(frozen=True)
class TokenizerIdentity:
    """The tokenizer shards are checked against. ``fingerprint`` None: it could not be loaded here,
    so shards are compared by backend + path only and flagged ``tokenizer_unverified``."""

    backend: str
    path: str | None
    fingerprint: str | None
    vocab_size: int | None = None
    pad_id: int | None = None
    eos_id: int | None = None

    @property
    def verified(self) -> bool:
        return self.fingerprint is not None

    @classmethod
    def from_description(cls, info: dict[str, Any]) -> TokenizerIdentity:
        """From a loaded tokenizer's ``describe()`` dict."""
        return cls(
            backend=str(info["backend"]),
            path=info.get("path"),
            fingerprint=info["fingerprint"],
            vocab_size=info.get("vocab_size"),
            pad_id=info.get("pad_id"),
            eos_id=info.get("eos_id"),
        )

    def label(self) -> str:
        return f"{self.backend}:{self.path}" if self.path else self.backend


@dataclass(frozen=True)
class ScanSpec:
    """What a shard must match to be usable by one config."""

    seq_len: int
    vocab_limit: int  # every id is below this: the model's embedding rows, the tokenizer's range
    tokenizer: TokenizerIdentity
    eval_glob: str | None = None
    anchor_glob: str | None = None  # data.anchor: shards mixed into runs, never new data
    # the other settings that decide ids (None: not checked)
    settings: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: Config, tokenizer: TokenizerIdentity) -> ScanSpec:
        limit = cfg.model.vocab_size
        if tokenizer.vocab_size:
            limit = min(limit, tokenizer.vocab_size)
        settings = {
            "add_bos": cfg.tokenizer.add_bos,
            "add_eos": cfg.tokenizer.add_eos,
            "document_boundary": cfg.data.document_boundary,
            "text_field": cfg.data.text_field,
        }
        return cls(
            cfg.data.seq_len, limit, tokenizer, cfg.data.eval_shards, cfg.data.anchor, settings
        )

    @property
    def pad_id(self) -> int:
        """Pad id for shards without meta: the tokenizer's pad, else EOS, else 0."""
        tok = self.tokenizer
        if tok.pad_id is not None:
            return tok.pad_id
        return tok.eos_id if tok.eos_id is not None else 0


@dataclass
class ShardEntry:
    """One shard (the files of one stem) and its state for a config."""

    name: str  # the stem
    files: dict[str, str]  # role (jsonl, bin, meta) -> file name
    sizes: dict[str, int]  # role -> bytes on disk
    state: ShardState = "new"
    reason: str | None = None
    shard_id: str | None = None
    meta: ShardMeta | None = None
    n_rows: int | None = None
    n_tokens: int | None = None
    last_row_len: int | None = None
    seq_len: int | None = None
    dtype: str | None = None
    pad_id: int = 0
    created: str | None = None
    record: SeenRecord | None = None  # its seen record, if any (also for invalid/duplicate shards)
    eval_only: bool = False
    anchor_only: bool = False  # named by data.anchor (data/anchor.py): drawn, never new data
    tokenizer_unverified: bool = False
    legacy: bool = False  # a torch.save'd tensor (.bin without meta)
    duplicate_of: str | None = None
    superseded_by: str | None = None
    unlisted: list[str] = field(default_factory=list)  # data files of the stem meta does not list
    meta_mtime_ns: int = 0  # orders shards made in the same second (supersession)

    @property
    def formats(self) -> list[str]:
        return [r for r in ("jsonl", "bin") if r in self.files]

    @property
    def data_files(self) -> dict[str, str]:
        return {r: self.files[r] for r in self.formats}

    @property
    def step(self) -> int | None:
        return self.record.step if self.record else None

    @property
    def valid(self) -> bool:
        """Readable and matching the config (new, seen, superseded or duplicate)."""
        return self.state in ("new", "seen", "superseded", "duplicate")

    @property
    def read_role(self) -> str | None:
        """The file rows are read from: ``.bin`` is preferred."""
        return "bin" if "bin" in self.files else ("jsonl" if "jsonl" in self.files else None)

    def source(self, data_dir: Path) -> ShardSource:
        """How the dataset reads this shard (only for a valid, present shard)."""
        from allllm.data.dataset import ShardSource

        role = self.read_role
        if not self.valid or role is None or self.n_rows is None or self.seq_len is None:
            raise DataError(f"{self.name}: shard is {self.state} and cannot be read")
        kind = "legacy" if self.legacy else role
        return ShardSource(
            name=self.name,
            path=data_dir / self.files[role],
            kind=kind,  # type: ignore[arg-type]
            seq_len=self.seq_len,
            n_rows=self.n_rows,
            last_row_len=self.last_row_len or 0,
            dtype=self.dtype if kind == "bin" else None,
            pad_id=self.pad_id,
            shard_id=self.shard_id,
        )


@dataclass
class ScanResult:
    """Every shard of a data dir with its state, plus seen records whose files are gone."""

    data_dir: Path
    shards: list[ShardEntry]  # present shards, sorted by name
    missing: list[ShardEntry]  # seen records with no files, sorted by step
    journaled: list[str]  # stems a tokenize is writing or left behind after a crash
    spec: ScanSpec | None = None  # what the shards were checked against (anchor shards too)

    def all_entries(self) -> list[ShardEntry]:
        return [*self.shards, *self.missing]

    def by_state(self, *states: ShardState) -> list[ShardEntry]:
        return [e for e in self.all_entries() if e.state in states]

    def trainable(self, *, only_new: bool = True) -> list[ShardEntry]:
        """Shards a run may train on: new (and seen unless ``only_new``), never eval-only."""
        states = ("new",) if only_new else ("new", "seen")
        return [e for e in self.shards if e.state in states and not (e.eval_only or e.anchor_only)]

    def eval_shards(self) -> list[ShardEntry]:
        """Valid eval-only shards (``data.eval_shards``)."""
        return [e for e in self.shards if e.state in ("new", "seen") and e.eval_only]

    def verify(self, entries: Iterable[ShardEntry]) -> list[ShardEntry]:
        """Check the digests of the files a read of ``entries`` uses (train and eval do this
        for the shards they use); returns the ones that failed, now ``invalid``.

        See :func:`verify_reads`: the ``.jsonl`` of a shard read from its ``.bin`` is left
        to ``status --verify``, and unchanged files are not read again.
        """
        return verify_reads(entries, self.data_dir)


def verify_reads(entries: Iterable[ShardEntry], directory: Path) -> list[ShardEntry]:
    """Check the data file each of ``entries`` (shards in ``directory``) is read from, and its
    ``.docs`` sidecar, against meta; a shard that fails becomes ``invalid`` and is returned.

    Only what training reads is hashed (10B tokens: ~40 GB of ``.bin``, not the ~120 GB
    ``.jsonl`` beside it), each file at most once per process, and not at all when the data
    dir's digest cache (``data/.allllm/digests.json``) knows it unchanged; a read-only
    directory just keeps no cache.
    """
    cache = DigestCache.for_data_dir(directory, trust_own=True)
    failed = []
    for entry in entries:
        reason = digest_problem(entry, directory, cache, reads_only=True)
        if reason:
            entry.state, entry.reason = "invalid", reason
            failed.append(entry)
    cache.save()
    return failed


def digest_problem(
    entry: ShardEntry,
    data_dir: Path,
    cache: DigestCache | None = None,
    *,
    reads_only: bool = False,
) -> str | None:
    """Compare each data file's sha256, and the ``.docs`` sidecar's, with meta (reads the
    whole files, except those ``cache`` knows unchanged). The cache records a file's real
    digest, never meta's, so a changed file stays a mismatch. ``reads_only``: of the data
    files, only the one rows are read from (``read_role``)."""
    if entry.meta is None:
        return None
    read = entry.read_role
    listed = [
        (data_dir / entry.files.get(role, info.name), info.sha256)
        for role, info in entry.meta.files.items()
        if not reads_only or role == read
    ]
    docs = entry.meta.documents
    if docs is not None:
        listed.append((data_dir / f"{entry.name}{DOCS_SUFFIX}", docs.sha256))
    for path, sha256 in listed:
        try:
            if cache is None:
                digest = file_sha256(path)
            else:
                digest = cache.sha256(path, lambda path=path: file_sha256(path))
        except FileNotFoundError:
            return f"file listed in meta missing: {path.name}"
        except OSError as exc:
            return f"cannot read {path.name}: {exc.strerror or exc}"
        if digest != sha256:
            return f"digest mismatch: {path.name} does not match the sha256 in meta (file changed)"
    return None
