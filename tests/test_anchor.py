"""Anchor replay (``data.anchor``, ``train.anchor_fraction``): rows of a general corpus mixed into
every run, drawn without replacement across runs, never new data, never validation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from allllm.config import load_config
from allllm.data.tokenize.run import tokenize
from allllm.train.checkpoint import checkpoint_summary, latest_checkpoint
from allllm.train.options import QuietReporter, TrainOptions
from allllm.train.session import train
from allllm.use.status import build_status
from cli_helpers import run_cli
from shard_factory import tokenizer_info, write_shard
from train_helpers import MICRO_CONFIG, add_raw, make_workspace, seen, text
from use_helpers import inside

ANCHOR = {"anchor": "anchor/*.meta.json"}


def _anchor_corpus(root: Path, n_files: int = 3, words: int = 300) -> None:
    """Three anchor shards in anchor/, tokenized with the micro model's tokenizer."""
    cfg = json.loads(json.dumps(MICRO_CONFIG))
    cfg["name"] = "anchorsrc"
    cfg["data"].update({"dir": "anchor", "raw_path": "anchor_raw"})
    (root / "configs" / "anchorsrc.json").write_text(json.dumps(cfg))
    raw = root / "anchor_raw"
    raw.mkdir(exist_ok=True)
    for i in range(n_files):
        (raw / f"general{i}.txt").write_text(text(100 + i, words))
    with inside(root):
        tokenize(load_config(model="anchorsrc"))


def _train(**opts: object):  # -> TrainResult
    cfg = load_config(model="micro")
    tokenize(cfg)
    reporter = QuietReporter()
    result = train(cfg, TrainOptions(only_new=True, **opts), reporter)  # type: ignore[arg-type]
    return result, reporter


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = make_workspace(tmp_path, data=ANCHOR, train={"anchor_fraction": 0.25})
    _anchor_corpus(root)
    return root


def _state(root: Path):  # -> TrainState
    ref = latest_checkpoint(root / "checkpoints/micro")
    assert ref is not None
    return ref.read_state()


def test_the_pool_is_drawn_without_replacement_across_runs(ws: Path) -> None:
    with inside(ws):
        cfg = load_config(model="micro")
        draws, pool_rows = [], None
        for k in range(3):
            if k:
                add_raw(ws, f"more{k}a.txt", seed=40 + k)
                add_raw(ws, f"more{k}b.txt", seed=50 + k)
            result, _ = _train()
            assert result.status == "trained"
            plan = _state(ws).run
            assert plan is not None and plan.anchor
            n_new = sum(plan.shard_rows.values())
            assert plan.anchor_rows == round(n_new / 0.75 * 0.25)  # total = n_new/(1-r-a)
            draws.append([(sid, r) for sid, rows in plan.anchor.items() for r in rows])
        report = build_status(cfg, checkpoint=checkpoint_summary(cfg.checkpoint_path))
        pool_rows = report["anchor"]["rows"]
    assert len(report["anchor"]["shards"]) == 3 and pool_rows > 0
    first_two = draws[0] + draws[1]
    assert len(first_two) < pool_rows  # the sizes of this test: two runs stay in pass 1
    assert len(set(first_two)) == len(first_two)  # no (shard, row) repeats within a pass
    counts = Counter(first_two + draws[2])
    assert len(counts) == pool_rows  # the third run finished pass 1 and began pass 2 ...
    assert max(counts.values()) == 2
    assert sum(counts.values()) - pool_rows == sum(v == 2 for v in counts.values())
    assert report["anchor"]["pass"] == 2


def test_anchor_shards_are_never_seen_nor_validation(ws: Path) -> None:
    with inside(ws):
        _train()
        state = _state(ws)
        anchor_ids = set(state.run.anchor)  # type: ignore[union-attr]
        assert anchor_ids and not anchor_ids & set(seen(ws))
        assert not anchor_ids & set(state.run.shard_ids)  # type: ignore[union-attr]
        for subset in state.eval_subsets:
            assert not anchor_ids & set(subset["shards"])
        run = json.loads((ws / "checkpoints/micro/runs.jsonl").read_text().splitlines()[-1])
        assert run["anchor_rows"] == state.run.anchor_rows > 0  # type: ignore[union-attr]
        from allllm.use.evaluate import evaluate_model
        from allllm.use.trained import load_trained

        evaluated = evaluate_model(load_trained(load_config(model="micro"), device="cpu"))
        assert not any(s["name"].startswith("general") for s in evaluated.shards)


def test_anchor_documents_enter_the_ledger_as_trained(ws: Path) -> None:
    with inside(ws):
        cfg = json.loads(Path("configs/micro.json").read_text())
        cfg["train"]["anchor_fraction"] = 0.9 - 0.0  # draw the whole small pool in one run
        Path("configs/micro.json").write_text(json.dumps(cfg))
        _train()
        state = _state(ws)
        drawn = {sid for sid, rows in state.run.anchor.items() if rows}  # type: ignore[union-attr]
        assert len(drawn) == 3
        # the same text as an anchor file arrives as new data: every row is already trained
        Path("data/raw/copy.txt").write_text(Path("anchor_raw/general0.txt").read_text())
        result, reporter = _train()
        assert result.status == "nothing"
        assert any("already trained" in m for m in reporter.messages), reporter.messages


def test_anchor_in_the_data_dir_is_anchor_only(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path, data={"anchor": "data/part1.*.meta.json"}, train={"anchor_fraction": 0.2}
    )
    with inside(root):
        _train()
        state = _state(root)
        names = {e for files in state.run.shard_files.values() for e in files.values()}  # type: ignore[union-attr]
        assert not any(n.startswith("part1.") for n in names)  # never new data
        assert state.run.anchor and not set(state.run.anchor) & set(seen(root))  # type: ignore[union-attr]
        cfg = load_config(model="micro")
        report = build_status(cfg, checkpoint=checkpoint_summary(cfg.checkpoint_path))
        part1 = [s for s in report["shards"] if s["name"].startswith("part1.")]
        assert part1 and part1[0]["anchor_only"] and report["totals"]["new_rows"] == 0


def test_anchor_and_eval_shards_must_be_disjoint(tmp_path: Path, capsys) -> None:
    root = make_workspace(
        tmp_path, data={"anchor": "data/part1.*.meta.json", "eval_shards": "part1.*"}
    )
    with inside(root):
        tokenize(load_config(model="micro"))
        code, _, err = run_cli(["status", "--model", "micro"], capsys)
    assert code == 1 and "matches both data.anchor" in err and len(err.strip().splitlines()) == 1


def test_replay_plus_anchor_of_one_or_more_is_a_config_error(tmp_path: Path, capsys) -> None:
    root = make_workspace(tmp_path, train={"replay_fraction": 0.6, "anchor_fraction": 0.5})
    with inside(root):
        code, _, err = run_cli(["status", "--model", "micro"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "replay_fraction 0.6 + anchor_fraction 0.5 must be below 1" in err


def test_an_anchor_shard_of_another_tokenizer_is_invalid_and_not_used(ws: Path) -> None:
    other = tokenizer_info(backend="hf", path="other/tokenizer.json", fingerprint="a" * 64)
    bad = write_shard(ws / "anchor", [[1, 2, 3, 4] * 8] * 5, seq_len=32, tokenizer=other,
                      source="foreign")  # fmt: skip
    with inside(ws):
        _result, reporter = _train()
        plan = _state(ws).run
        assert plan is not None and plan.anchor and bad.shard_id not in plan.anchor
        assert any("skipping anchor shard" in w and "foreign" in w for w in reporter.warnings)
        cfg = load_config(model="micro")
        report = build_status(cfg, checkpoint=checkpoint_summary(cfg.checkpoint_path))
        states = {s["name"].split(".")[0]: s["state"] for s in report["anchor"]["shards"]}
        assert states["foreign"] == "invalid" and "tokenizer" in str(report["anchor"]["shards"])
