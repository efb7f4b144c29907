"""The versioning rule: old files resume, newer files stop with one line, never "corrupt".

``fixtures/v1_workspace`` was written by allllm 0.1.0 (format 1 everywhere) with a run
pending; today's code must finish that run exactly. A file of a newer format — trainer
state, seen records, shard meta — is a one-line error, exit 1: never a fallback to an
older checkpoint, a rebuilt file or fresh weights. Checkpoints that all fail to load stop
``train`` too; ``--start-fresh`` is the explicit way to train fresh weights then.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from allllm.config import load_config
from allllm.errors import CheckpointError, ConfigError, FormatVersionError
from allllm.train.options import QuietReporter, TrainOptions, TrainResult
from allllm.train.session import train
from allllm.util.versions import FileFormat
from cli_helpers import run_cli
from use_helpers import inside

FIXTURES = Path(__file__).parent / "fixtures"
CKPT = Path("checkpoints/fixture")


@pytest.fixture
def v1(tmp_path: Path) -> Iterator[Path]:
    """A copy of the 0.1.0 workspace, as the current directory."""
    root = tmp_path / "ws"
    shutil.copytree(FIXTURES / "v1_workspace", root)
    with inside(root):
        yield root


def _train(**options: object) -> tuple[TrainResult, QuietReporter]:
    reporter = QuietReporter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixture's expected weights were made
    try:
        result = train(load_config(model="fixture"), TrainOptions(**options), reporter)
    finally:
        torch.set_num_threads(threads)
    return result, reporter


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file but the trainer's lock and the data dir's caches, with its bytes."""
    files = (p for p in root.rglob("*") if p.is_file() and p.name != "lock")
    return {str(p.relative_to(root)): p.read_bytes() for p in files if ".allllm" not in p.parts}


def test_a_workspace_of_allllm_0_1_0_finishes_its_pending_run(v1: Path) -> None:
    from safetensors.torch import load_file

    from allllm.train.checkpoint import latest_checkpoint

    expected = json.loads((FIXTURES / "v1_expected" / "summary.json").read_text())
    result, reporter = _train(only_new=True)
    assert result.status == "trained" and result.exit_code == 0
    assert any("resuming from" in m and "step-00000008" in m for m in reporter.messages)
    assert [r["run_id"] for r in result.runs] == expected["runs"][1:]  # the pending one
    assert (result.step, result.tokens_seen) == (expected["step"], expected["tokens_seen"])
    ref = latest_checkpoint(CKPT)
    assert ref is not None and ref.step == expected["step"]
    state = ref.read_state()
    assert state.run_complete and sorted(state.seen) == expected["seen"]
    seen_file = json.loads((CKPT / "seen_datasets.json").read_text())
    assert sorted(seen_file["shards"]) == expected["seen"]
    # version 1 held no split: its records took the snapshot's (a one-time migration, now v3)
    old_state = json.loads(
        (FIXTURES / "v1_workspace" / CKPT / "step-00000008" / "trainer_state.json").read_text()
    )
    split = (old_state["config"]["train"]["seed"], old_state["config"]["data"]["val_fraction"])
    assert seen_file["format_version"] == 3
    # its shards have no per-document sidecar: their documents came from the token stream
    # (split at EOS), and the ledger the finished run wrote lists them
    assert state.ledger and sum(s["count"] for s in state.ledger) > 0
    # trainer state 4: the run finished here is the forgetting matrix's first column,
    # numbered after the 0.1.0 run before it (which has no frozen subset); no anchor drawn
    assert [s["run"] for s in state.eval_subsets] == [2] and state.anchor is None
    for record in list(seen_file["shards"].values()) + list(state.seen.values()):
        assert (record["val_seed"], record["val_fraction"]) == split
    runs = [json.loads(line) for line in (CKPT / "runs.jsonl").read_text().splitlines()]
    assert [r["run_id"] for r in runs] == expected["runs"]
    ours = load_file(ref.path / "model.safetensors")
    theirs = load_file(FIXTURES / "v1_expected" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:  # the continuation 0.1.0 itself computed
        # to float rounding: another CPU's kernels (AVX2 / AVX-512) differ by ~1e-6 after six
        # steps, while a wrong warm-up or optimizer state differs by 1e-4 or more
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)


FUTURE = 99  # a format_version no allllm writes yet


def _bump(path: Path, **extra: object) -> None:
    data = json.loads(path.read_text())
    data["format_version"] = FUTURE
    data.update(extra)
    path.write_text(json.dumps(data))


def test_a_newer_trainer_state_stops_train_and_status_without_falling_back(
    v1: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _bump(CKPT / "step-00000008" / "trainer_state.json", a_field_of_the_future=1)
    before = _snapshot(v1)
    with pytest.raises(FormatVersionError) as err:
        _train(only_new=True)
    line = err.value.one_line()
    assert "step-00000008/trainer_state.json" in line and "newer allllm" in line
    assert "upgrade allllm" in line and "\n" not in line
    assert _snapshot(v1) == before  # nothing rebuilt, moved, trained or set aside
    for verb in (["train", "--model", "fixture", "--only-new"], ["status", "--model", "fixture"]):
        code, _out, stderr = run_cli(verb, capsys)
        assert code == 1 and stderr.count("\n") == 1 and f"format_version {FUTURE}" in stderr
        assert "Traceback" not in stderr
    assert _snapshot(v1) == before


def test_newer_seen_records_are_not_rebuilt_as_if_corrupt(v1: Path) -> None:
    _bump(CKPT / "seen_datasets.json")
    before = _snapshot(v1)
    with pytest.raises(FormatVersionError, match=r"seen_datasets\.json: seen records of"):
        _train(only_new=True)
    assert _snapshot(v1) == before
    assert not list((v1 / CKPT).glob("*.corrupt-*"))


def test_a_newer_shard_meta_is_an_error_not_an_invalid_shard(v1: Path) -> None:
    from allllm.use.status import build_status

    meta = next(Path("data").glob("b.cached.*.meta.json"))
    _bump(meta, documents={"name": "b.docs"})  # a key this allllm does not know
    with pytest.raises(FormatVersionError, match=r"b\.cached\..*meta\.json: shard meta of"):
        build_status(load_config(model="fixture"))
    with pytest.raises(FormatVersionError):
        _train(only_new=True)


def _break_every_checkpoint() -> None:
    for step in sorted(CKPT.glob("step-*")):
        (step / "model.safetensors").write_bytes(b"not safetensors")


def test_no_usable_checkpoint_stops_train_naming_them(v1: Path) -> None:
    _break_every_checkpoint()
    before = _snapshot(v1)
    with pytest.raises(CheckpointError) as err:
        _train(only_new=True)
    line = err.value.one_line()
    assert "no usable checkpoint" in line and "--start-fresh" in line
    assert "step-00000006" in line and "step-00000008" in line
    assert _snapshot(v1) == before


def test_start_fresh_sets_them_aside_and_trains_fresh_weights(v1: Path) -> None:
    _break_every_checkpoint()
    result, reporter = _train(only_new=True, start_fresh=True)
    assert result.status == "trained"
    assert any("starting from freshly initialised weights" in m for m in reporter.messages)
    aside = sorted(p.name.split(".abandoned-")[0] for p in (v1 / CKPT).glob("*.abandoned-*"))
    assert aside == ["seen_datasets.json", "step-00000006", "step-00000008"]
    (run,) = result.runs  # both shards again: the fresh model has seen neither
    assert len(run["shards"]) == 2 and run["start_step"] == 0


def test_start_fresh_refuses_a_usable_checkpoint(v1: Path) -> None:
    with pytest.raises(ConfigError, match="is a usable checkpoint"):
        _train(only_new=True, start_fresh=True)


def test_an_interrupted_first_save_is_not_an_unusable_checkpoint(tmp_path: Path) -> None:
    """A checkpoint without its completion marker was never written: training starts over."""
    from train_helpers import make_workspace

    make_workspace(tmp_path, n_files=1, words=200)
    with inside(tmp_path):
        (Path("checkpoints/micro/step-00000004")).mkdir(parents=True)
        cfg = load_config(model="micro")
        from allllm.data.tokenize.run import tokenize

        tokenize(cfg)
        reporter = QuietReporter()
        result = train(cfg, TrainOptions(only_new=True, max_steps=1), reporter)
    assert result.status == "bounded"
    assert any("incomplete" in w for w in reporter.warnings)


def test_file_formats_migrate_older_versions_step_by_step() -> None:
    def rename_length(d: dict) -> dict:
        d["size"] = d.pop("length")
        return d

    fmt = FileFormat(
        "widget", current=3, migrations={1: rename_length, 2: lambda d: {**d, "unit": "bytes"}}
    )
    old = {"format_version": 1, "length": 5}
    assert fmt.upgrade(old, "w.json") == {"format_version": 3, "size": 5, "unit": "bytes"}
    assert old == {"format_version": 1, "length": 5}  # the input is left alone
    assert fmt.upgrade({"format_version": 3, "size": 1}, "w.json")["size"] == 1
    with pytest.raises(FormatVersionError, match=r"w\.json: widget of format_version 4"):
        fmt.upgrade({"format_version": 4}, "w.json")
    for not_a_version in ({"format_version": "2"}, {"format_version": True}, {}, []):
        assert fmt.version_of(not_a_version) is None
    with pytest.raises(AssertionError, match="no migration from format_version"):
        FileFormat("gadget", current=2)


def test_every_file_format_has_a_migration_for_each_older_version() -> None:
    from allllm.data.seen import SEEN_FORMAT
    from allllm.data.shard_format import META_FORMAT
    from allllm.train.evals_log import EVALS_FORMAT
    from allllm.train.state import STATE_FORMAT

    for fmt in (STATE_FORMAT, SEEN_FORMAT, META_FORMAT, EVALS_FORMAT):
        assert all(v in fmt.migrations for v in range(1, fmt.current)), fmt.kind
