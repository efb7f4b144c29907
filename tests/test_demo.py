"""``allllm demo``: the corpus (ast, deterministic, no imports), the workspace rules, and a
shortened run end to end through the same library function the verb calls."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from allllm.demo.corpus import build_corpus, iter_entries
from allllm.demo.run import QuietDemoUI, run_demo
from allllm.demo.workspace import MARKER, DemoSettings, prepare_workspace
from allllm.errors import ConfigError, DataError
from cli_helpers import cli_exit_code

SIDE_EFFECT = '''"""A module whose import would be noticed at once by this test."""
raise SystemExit("imported!")


def visible(x):
    """Return x unchanged; a public function with a docstring long enough to keep."""


def _private():
    """A private helper's docstring, which the corpus leaves out of the demo text."""


class Thing:
    """A public class; its methods are read too, without running anything at all."""

    def method(self):
        """Compute nothing at all, slowly and carefully, as documented right here."""
'''


def test_corpus_reads_docstrings_with_ast_and_never_imports(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "boom.py").write_text(SIDE_EFFECT)
    (root / "pkg" / "__init__.py").write_text('"""The package pkg: its own docstring is kept."""\n')
    (root / "_private_mod.py").write_text(
        '"""Private modules are skipped entirely, even long ones."""'
    )
    (root / "test").mkdir()
    (root / "test" / "t.py").write_text('"""Test suites are skipped as well, whatever they say."""')
    (root / "broken.py").write_text("def (:\n")  # not Python: skipped
    entries = list(iter_entries(root))
    headers = [e.split("\n", 1)[0] for e in entries]
    assert headers == [
        "module boom",
        "def boom.visible",
        "class boom.Thing",
        "def boom.Thing.method",
        "module pkg",
    ]
    with pytest.raises(DataError, match="only enough docstrings"):
        build_corpus([10_000], root)


def test_stdlib_corpus_is_deterministic() -> None:
    first = build_corpus([20_000, 5_000])
    assert first == build_corpus([20_000, 5_000])
    assert len(first[0].encode()) >= 20_000 and len(first[1].encode()) >= 5_000
    assert first[1] not in first[0]  # the second part is new text


def test_workspace_is_refused_when_it_holds_other_files(tmp_path: Path) -> None:
    theirs = tmp_path / "mine"
    theirs.mkdir()
    (theirs / "thesis.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not an allllm demo workspace"):
        prepare_workspace(theirs)
    assert sorted(p.name for p in theirs.iterdir()) == ["thesis.txt"]
    with pytest.raises(ConfigError, match="not a folder"):
        prepare_workspace(theirs / "thesis.txt")

    demo = tmp_path / "demo"
    assert prepare_workspace(demo) is False and (demo / MARKER).is_file()
    for rel in (
        "configs/tiny.json",
        "data/raw/x.txt",
        "checkpoints/tiny/a",
        "loss.png",
        "keep.txt",
    ):
        (demo / rel).parent.mkdir(parents=True, exist_ok=True)
        (demo / rel).write_text("x")
    assert prepare_workspace(demo) is True  # a rerun starts over ...
    assert sorted(p.name for p in demo.iterdir()) == [MARKER, "configs", "keep.txt"]
    assert not any((demo / "configs").iterdir())  # ... and keeps what the demo did not write


def test_cli_demo_refuses_a_folder_of_user_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.md").write_text("mine")
    assert cli_exit_code(["demo", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an allllm demo workspace" in err
    assert err.count("\n") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]


SMALL = DemoSettings(
    part_bytes=(14_000, 6_000),
    max_new_tokens=40,
    config={
        # a smaller model than the tiny preset, so the test takes seconds
        "model": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_layers": 2,
            "num_heads": 2,
            "num_kv_heads": 2,
        },
        "train": {"warmup_steps": 1, "eval_every": 2, "checkpoint_every": 50, "lr": 0.005},
        "data": {"val_fraction": 0.1},
    },
)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    ui = QuietDemoUI()
    result = run_demo(tmp_path / "demo", SMALL, ui)
    ws = tmp_path / "demo"
    assert [s.split(". ", 1)[1] for s in ui.steps] == [
        "A workspace",
        "Raw text",
        "Tokenize",
        "Train on what is new",
        "Status",
        "Generate",
        "More text arrives",
        "Train only on the new shard",
        "Status again",
        "Generate again",
        "Evaluate",
        "Plot",
    ]
    first, second = result.runs
    assert len(first["shards"]) == 1 and len(second["shards"]) == 1
    assert second["shards"] != first["shards"]  # only the new shard was trained ...
    assert second["start_step"] == first["end_step"] < second["end_step"]  # ... continuing
    seen = {s["shard_id"]: s["step"] for s in result.status["shards"]}  # type: ignore[index]
    assert seen == {first["shards"][0]: first["end_step"], second["shards"][0]: second["end_step"]}
    assert all(g.new_tokens > 0 for g in result.generations)
    metrics = [
        json.loads(x) for x in (ws / "checkpoints/tiny/metrics.jsonl").read_text().split("\n") if x
    ]
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5  # the loss clearly dropped
    assert result.evaluation is not None and math.isfinite(result.evaluation.loss)
    assert result.plot is not None and result.plot.read_bytes().startswith(b"\x89PNG")
    config = json.loads((ws / "configs/tiny.json").read_text())
    assert config["name"] == "tiny" and config["train"]["warmup_steps"] == 1
    assert ui.warnings == []
