"""``allllm status``: what a model has seen, what is new, what is wrong (docs/design.md, JSON outputs).

:func:`build_status` returns one JSON-serializable dict; ``status --json`` prints
it and :func:`allllm.cli.views.status.render_status` draws it as a table. It writes
nothing but a cache of repeat counts (a broken ``seen_datasets.json`` is reported, not repaired; the
next ``train`` repairs it) and never imports torch unless a legacy shard must be
read under ``trust_unverified``. The tokenizer is loaded only when there are
shards to compare; when it cannot be loaded here (an HF hub id offline, ...)
shards are compared by backend and path and flagged "tokenizer unverified".

Report keys (all always present):

- ``config``, ``data_dir``, ``checkpoint_dir``, ``seq_len``
- ``tokenizer``: ``backend``, ``path``, ``fingerprint`` (null when unverified), ``verified``
- ``digests_checked`` (``verify``), ``trust_unverified``
- ``shards``: one object per shard, sorted by name, then the ``missing`` ones:
  ``name`` (the stem), ``shard_id``, ``files`` {role: file name}, ``formats``, ``state``,
  ``reason``, ``rows``, ``tokens``, ``step`` (of its seen record), ``run_id``, ``anchor_only``,
  ``train_rows``, ``train_tokens``, ``val_rows``, ``val_tokens`` (the validation split; an eval-only
  shard is all validation), ``eval_only``, ``tokenizer_unverified``, ``legacy``, ``pending``
  (in the pending run), ``duplicate_of``, ``superseded_by``, ``created``; a new shard also
  ``repeat_rows`` / ``repeat_tokens``: its training rows made only of documents the model has
  trained (the next run skips them; cached per ledger version, see ``use/repeats.py``)
- ``totals``: ``shards``, ``states`` {state: count}, ``new_rows``/``new_tokens`` (training rows
  of trainable new shards less their repeats: what ``train --only-new`` would train),
  ``repeat_rows``/``repeat_tokens``, ``seen_rows``/``seen_tokens``
  (seen records of present shards), ``val_rows``/``val_tokens``, ``eval_rows``/``eval_tokens``,
  ``missing_rows``/``missing_tokens``
- ``checkpoint``: null or the ``checkpoint`` argument without its ``seen`` map (``step``,
  ``tokens_seen``, ``path``, ``time``, ``pending_run`` {``run_id``, ``shards``, ``steps_done``,
  ``steps_total``})
- ``forgetting``: null or the forgetting matrix's latest row (``use/forgetting.py``
  ``latest_row``: ``after_run``, ``step``, ``runs`` [{``run``, ``run_id``, ``loss``,
  ``loss_after_run``, ``change``}], ``eval_shards`` null | {``loss``, ``loss_first``, ``change``})
- ``anchor``: null (no ``data.anchor``) or {``pattern``, ``fraction``, ``shards`` [{``name``,
  ``meta``, ``shard_id``, ``state``, ``reason``, ``rows``, ``tokens``}], ``rows`` (usable),
  ``pass`` (1-based), ``drawn`` (rows of this pass drawn), ``left`` (rows left in it)}; anchor
  shards in the data dir are also in ``shards`` with ``anchor_only``
- ``journaled``: stems a tokenize is writing or left after a crash
- ``tokenize_job``: null or a tokenize job that runs or stopped with work left
  (``data/tokenize/group_progress.py`` ``job_overview``: ``job``, ``running``,
  ``ranks_alive``, ``jobs``, ``jobs_done``, ``bytes``, ``bytes_done``)
- ``notes``: plain sentences (no data dir, no checkpoints yet, tokenizer unverified, ...)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from allllm.data.registry import STATES, ScanSpec, ShardEntry, TokenizerIdentity, scan_shards
from allllm.data.seen import SeenMap, load_seen, reconcile, seen_path
from allllm.data.tokenize.group_progress import job_overview
from allllm.data.valsplit import split_sizes
from allllm.errors import AllllmError

if TYPE_CHECKING:
    from allllm.config import Config


def _tokenizer_identity(cfg: Config, tokenizer: Any, notes: list[str]) -> TokenizerIdentity:
    """The loaded tokenizer's identity, or the config's backend+path when it cannot be loaded."""
    if tokenizer is None:
        from allllm.tokenizer.manager import TokenizerManager

        try:
            tokenizer = TokenizerManager.from_config(cfg.tokenizer)
        except AllllmError as exc:  # e.g. a TokenizerError: an HF hub id while offline
            notes.append(
                f"tokenizer unverified: it cannot be loaded here ({exc.one_line()}); shards are "
                "compared by tokenizer backend and path only"
            )
            return TokenizerIdentity(cfg.tokenizer.backend, cfg.tokenizer.path, None)
    info = dict(tokenizer.describe())
    return TokenizerIdentity(
        backend=str(info.get("backend", cfg.tokenizer.backend)),
        path=info.get("path", cfg.tokenizer.path),
        fingerprint=tokenizer.fingerprint,
        vocab_size=tokenizer.vocab_size,
        pad_id=info.get("pad_id"),
        eos_id=info.get("eos_id"),
    )


def _seen_map(cfg: Config, checkpoint: dict[str, Any] | None, notes: list[str]) -> SeenMap:
    ckpt_map = checkpoint.get("seen") if checkpoint else None
    legacy = (checkpoint or {}).get("legacy_split")
    file_map = load_seen(
        seen_path(cfg.checkpoint_path),
        rebuild_from=lambda: ckpt_map,
        repair=False,
        warn=notes.append,
        legacy_split=tuple(legacy) if legacy else (cfg.train.seed, cfg.data.val_fraction),
    )
    return reconcile(file_map, ckpt_map, warn=notes.append)


def _shard_report(
    entry: ShardEntry, cfg: Config, pending: dict[str, tuple[int, float]]
) -> dict[str, Any]:
    rec = entry.record
    rows = entry.n_rows if entry.n_rows is not None else None
    split: tuple[int | None, ...] = (None, None, None, None)
    if entry.valid and entry.shard_id and rows is not None and entry.seq_len:
        if entry.eval_only:
            split = (0, 0, rows, entry.n_tokens)
        elif entry.anchor_only:
            split = (0, 0, 0, 0)  # drawn as anchor replay, never new data nor validation
        else:
            # a trained shard keeps the split it was trained with; the pending run's shards
            # the one it planned; only shards never planned follow the current config
            seed, fraction = (
                rec.split
                if rec is not None
                else pending.get(entry.shard_id, (cfg.train.seed, cfg.data.val_fraction))
            )
            split = split_sizes(
                seed, entry.shard_id, rows, entry.seq_len, entry.last_row_len or 0, fraction
            )
    return {
        "name": entry.name,
        "shard_id": entry.shard_id,
        "files": entry.data_files,
        "formats": entry.formats,
        "state": entry.state,
        "reason": entry.reason,
        "rows": rows,
        "tokens": entry.n_tokens,
        "step": rec.step if rec else None,
        "run_id": rec.run_id if rec else None,
        "train_rows": split[0],
        "train_tokens": split[1],
        "val_rows": split[2],
        "val_tokens": split[3],
        "eval_only": entry.eval_only,
        "anchor_only": entry.anchor_only,
        "tokenizer_unverified": entry.tokenizer_unverified,
        "legacy": entry.legacy,
        "pending": bool(entry.shard_id and entry.shard_id in pending),
        "duplicate_of": entry.duplicate_of,
        "superseded_by": entry.superseded_by,
        "created": entry.created,
    }


def _add_repeats(
    cfg: Config,
    shards: list[dict[str, Any]],
    entries: list[ShardEntry],
    checkpoint: dict[str, Any] | None,
    pending: dict[str, tuple[int, float]],
    notes: list[str],
) -> None:
    """``repeat_rows`` / ``repeat_tokens`` of each new shard: rows of documents already trained."""
    from allllm.use.repeats import repeat_counts

    refs = (checkpoint or {}).get("ledger")
    if checkpoint is not None and refs is None and checkpoint.get("seen"):
        notes.append(
            "the document ledger is built at the next `allllm train` (this checkpoint is older "
            "than it): repeats of trained text are not counted yet"
        )
    new = [
        e
        for e in entries
        if e.state == "new"
        and not (e.eval_only or e.anchor_only)
        and e.shard_id
        and e.n_rows
        and e.valid
    ]
    splits = {
        e.shard_id or "": pending.get(e.shard_id or "", (cfg.train.seed, cfg.data.val_fraction))
        for e in new
    }
    counts = repeat_counts(cfg, new, refs, splits)
    for shard in shards:
        if shard["state"] != "new" or shard["eval_only"] or shard["anchor_only"]:
            continue
        found = counts.get(shard["shard_id"] or "", {})
        shard["repeat_rows"] = found.get("repeat_rows", 0)
        shard["repeat_tokens"] = found.get("repeat_tokens", 0)


def _totals(shards: list[dict[str, Any]], entries: list[ShardEntry]) -> dict[str, Any]:
    t: dict[str, Any] = {"shards": sum(1 for s in shards if s["state"] != "missing")}
    t["states"] = {state: sum(1 for s in shards if s["state"] == state) for state in STATES}
    for key in ("new", "seen", "val", "eval", "missing", "repeat"):
        t[f"{key}_rows"] = t[f"{key}_tokens"] = 0
    for s, e in zip(shards, entries):
        if s["state"] == "new" and not (s["eval_only"] or s["anchor_only"]):
            # what --only-new would train: rows of documents already trained are skipped
            t["new_rows"] += (s["train_rows"] or 0) - s.get("repeat_rows", 0)
            t["new_tokens"] += (s["train_tokens"] or 0) - s.get("repeat_tokens", 0)
            t["repeat_rows"] += s.get("repeat_rows", 0)
            t["repeat_tokens"] += s.get("repeat_tokens", 0)
        if s["state"] == "seen" and e.record is not None:
            t["seen_rows"] += e.record.rows
            t["seen_tokens"] += e.record.tokens
        if s["state"] in ("new", "seen"):
            prefix = "eval" if s["eval_only"] else "val"
            t[f"{prefix}_rows"] += s["val_rows"] or 0
            t[f"{prefix}_tokens"] += s["val_tokens"] or 0
        if s["state"] == "missing":
            t["missing_rows"] += s["rows"] or 0
            t["missing_tokens"] += s["tokens"] or 0
    return t


def _tokenize_job_note(job: dict[str, Any]) -> str:
    done = (
        f"{job['jobs_done']} of {job['jobs']} shard jobs done, "
        f"{job['bytes_done'] / 1e6:.1f} of {job['bytes'] / 1e6:.1f} MB"
    )
    if job["running"]:
        ranks = ", ".join(map(str, job["ranks_alive"]))
        return f"tokenize job {job['job']} is running (ranks alive: {ranks}): {done}"
    return (
        f"tokenize job {job['job']} has work left and no rank running: {done} — run its "
        "remaining tasks, or `allllm tokenize` to finish the rest"
    )


def _notes_for_scan(report: dict[str, Any], entries: list[ShardEntry], trust: bool) -> list[str]:
    notes = []
    states = report["totals"]["states"]
    if states["unverified"]:
        notes.append(
            f"{states['unverified']} shard(s) have no meta file and are skipped; "
            "--trust-unverified reads and checks them, then uses them"
        )
    if states["missing"]:
        notes.append(
            f"{states['missing']} seen shard(s) have no files any more (trained on, then deleted "
            "or moved out of the data dir)"
        )
    job = report["tokenize_job"]
    if job is not None:
        notes.append(_tokenize_job_note(job))
    if report["journaled"]:
        notes.append(
            f"{len(report['journaled'])} stem(s) are being written by a tokenize or were left by a "
            "crashed one (ignored; the next tokenize cleans them up)"
        )
    unlisted = [name for e in entries for name in e.unlisted]
    if unlisted:
        notes.append(
            f"files not listed in their shard's meta are ignored: {', '.join(unlisted[:5])}"
        )
    if trust and any(e.legacy for e in entries):
        notes.append("legacy torch.save shards were read with weights_only=True (no code runs)")
    return notes


def build_status(
    cfg: Config,
    *,
    verify: bool = False,
    trust_unverified: bool = False,
    checkpoint: dict[str, Any] | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """The status report (docs/design.md, JSON outputs) for ``cfg`` (see the module doc for every key).

    ``checkpoint``: the latest complete checkpoint's summary (its keys, plus ``seen``: its
    cumulative seen map, which wins over ``seen_datasets.json``), or None when there is none.
    ``tokenizer``: an already loaded tokenizer (``.fingerprint``, ``.vocab_size``,
    ``.describe()``); by default it is loaded from the config when shards exist.
    ``verify`` also checks file digests; ``trust_unverified`` reads meta-less shards.
    """
    notes: list[str] = []
    data_dir, ckpt_dir = cfg.data_dir, cfg.checkpoint_path
    seen = _seen_map(cfg, checkpoint, notes)
    has_data = data_dir.is_dir()
    if not has_data:
        notes.insert(
            0,
            f"no data dir {data_dir} yet — put text in {cfg.data.raw_paths[0]} and run "
            f"`allllm tokenize --model {cfg.name}`",
        )
        ident = TokenizerIdentity(cfg.tokenizer.backend, cfg.tokenizer.path, None)
    else:
        ident = _tokenizer_identity(cfg, tokenizer, notes)
    result = scan_shards(
        data_dir,
        ScanSpec.from_config(cfg, ident),
        seen,
        verify=verify,
        trust_unverified=trust_unverified,
    )
    pending_run = (checkpoint or {}).get("pending_run") or {}
    planned = (checkpoint or {}).get("pending_splits") or {}
    pending = {
        str(s): (int(planned[s][0]), float(planned[s][1]))
        if s in planned
        else (cfg.train.seed, cfg.data.val_fraction)
        for s in pending_run.get("shards", [])
    }
    entries = result.all_entries()
    shards = [_shard_report(e, cfg, pending) for e in entries]
    _add_repeats(cfg, shards, entries, checkpoint, pending, notes)
    report: dict[str, Any] = {
        "config": cfg.name,
        "data_dir": str(data_dir),
        "checkpoint_dir": str(ckpt_dir),
        "seq_len": cfg.data.seq_len,
        "tokenizer": {
            "backend": ident.backend,
            "path": ident.path,
            "fingerprint": ident.fingerprint,
            "verified": ident.verified,
        },
        "digests_checked": verify,
        "trust_unverified": trust_unverified,
        "shards": shards,
        "totals": _totals(shards, entries),
        "checkpoint": None,
        "forgetting": None,
        "anchor": None,
        "journaled": result.journaled,
        "tokenize_job": job_overview(data_dir) if has_data else None,
        "notes": notes,
    }
    if has_data and not result.shards:
        notes.append(
            f"no shards in {data_dir} yet — run `allllm tokenize --model {cfg.name}` to make some"
        )
    notes.extend(_notes_for_scan(report, entries, trust_unverified))
    if checkpoint is None:
        notes.append(f"no checkpoints yet in {ckpt_dir}")
    else:
        hidden = ("seen", "legacy_split", "pending_splits", "ledger", "eval_subsets", "anchor")
        report["checkpoint"] = {k: v for k, v in checkpoint.items() if k not in hidden}
    report["forgetting"] = _forgetting(cfg, checkpoint)
    report["anchor"] = anchor_report(cfg, ScanSpec.from_config(cfg, ident), result, checkpoint)
    return report


def anchor_report(
    cfg: Config, spec: ScanSpec, scan: Any, checkpoint: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The anchor shards ``data.anchor`` names and how far the pool is drawn (None: no anchor)."""
    from allllm.data.anchor import find_anchor
    from allllm.data.anchor_pool import AnchorPool

    if not cfg.data.anchor:
        return None
    shards = find_anchor(spec, scan)
    usable = [(s.entry.shard_id or "", s.entry.n_rows or 0) for s in shards if s.usable]
    pool = AnchorPool.from_dict((checkpoint or {}).get("anchor"), cfg.train.seed)
    return {
        "pattern": cfg.data.anchor,
        "fraction": cfg.train.anchor_fraction,
        "shards": [
            {
                "name": s.entry.name,
                "meta": str(s.meta_path),
                "shard_id": s.entry.shard_id,
                "state": s.entry.state if s.usable else "invalid",
                "reason": None if s.usable else (s.entry.reason or f"{s.entry.state}, no rows"),
                "rows": s.entry.n_rows,
                "tokens": s.entry.n_tokens,
            }
            for s in shards
        ],
        "rows": sum(n for _, n in sorted(set(usable))),
        "pass": pool.pass_index + 1,
        "drawn": pool.cursor,
        "left": pool.remaining(sorted(set(usable))),
    }


def _forgetting(cfg: Config, checkpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stored matrix's latest row (read from evals.jsonl; nothing is evaluated)."""
    from allllm.use.forgetting import build_matrix, latest_row, read_rows

    subsets = (checkpoint or {}).get("eval_subsets") or []
    if not subsets:
        return None
    return latest_row(build_matrix(subsets, read_rows(cfg.checkpoint_path)))


def build_provenance(
    cfg: Config, path: str, *, checkpoint: dict[str, Any] | None = None, tokenizer: Any = None
) -> dict[str, Any]:
    """``status --source PATH``: the provenance of one raw file (:mod:`allllm.use.provenance`)."""
    from allllm.use.provenance import source_provenance

    notes: list[str] = []
    seen = _seen_map(cfg, checkpoint, notes)
    ident = _tokenizer_identity(cfg, tokenizer, notes)
    report = source_provenance(cfg, path, ident, seen, checkpoint)
    report["notes"] = notes
    if not report["ledger_built"]:
        notes.append(
            "the document ledger is built at the next `allllm train`: nothing is counted as "
            "trained until then"
        )
    return report
