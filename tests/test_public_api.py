"""The stable Python API: lazy public names on ``allllm``, light imports, the 0.1.0 paths kept.

``import allllm`` and ``import allllm.cli`` must stay light (``allllm --help``
answers in well under a second); the names README documents load their module
on first use. The module paths README named in 0.1.0 keep working for one
release, with a DeprecationWarning that names the new place.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import allllm

HEAVY = ("torch", "transformers", "numpy", "safetensors")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(*[m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("statement", ["import allllm", "import allllm.cli", "import allllm.train"])
def test_light_imports_load_no_heavy_module(statement: str) -> None:
    assert _loaded_after(statement) == []


def test_the_public_names_are_the_library_calls_behind_the_verbs() -> None:
    from allllm.data.tokenize.run import tokenize
    from allllm.hf.weights_in import from_hf
    from allllm.hf.weights_out import to_hf
    from allllm.train.session import train
    from allllm.use.status import build_status

    assert allllm.tokenize is tokenize and allllm.build_status is build_status
    assert allllm.from_hf is from_hf and allllm.to_hf is to_hf
    assert callable(allllm.train) and allllm.train.session.train is train
    assert set(allllm.__all__) >= {"tokenize", "build_status", "train", "from_hf", "to_hf"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        allllm.nope  # noqa: B018


def test_allllm_train_is_callable_however_it_was_imported(tmp_path: Path) -> None:
    """``allllm.train`` is the training package (importing any of its modules binds it)."""
    import allllm.train.checkpoint
    from allllm.config import Config
    from allllm.train.options import QuietReporter

    cfg = Config.model_validate(
        {
            "name": "empty",
            "model": {"vocab_size": 264, "hidden_size": 8, "num_layers": 1, "num_heads": 2},
            "data": {"dir": str(tmp_path / "data"), "seq_len": 8},
            "checkpoint_dir": str(tmp_path / "ckpt"),
        }
    )
    reporter = QuietReporter()
    result = allllm.train(cfg, reporter=reporter)
    assert result.status == "nothing" and result.exit_code == 0
    assert any("no shards in" in m for m in reporter.messages)


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("allllm.status", "build_status", "allllm.use.status"),
        ("allllm.train.trainer", "train", "allllm.train.session"),
    ],
)
def test_the_0_1_0_module_paths_still_work_and_say_where_they_went(
    old: str, name: str, new: str
) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


@pytest.mark.parametrize("name", ["from_hf", "to_hf", "build_model", "load_init_weights"])
def test_hf_names_moved_out_of_allllm_model_still_resolve(name: str) -> None:
    import allllm.hf
    import allllm.model

    with pytest.warns(DeprecationWarning, match=f"allllm.model.{name} moved to allllm.hf"):
        moved = getattr(allllm.model, name)
    assert moved is getattr(allllm.hf, name)


def test_to_hf_takes_the_config_from_the_model_and_the_old_call_still_works(
    tmp_path: Path,
) -> None:
    import torch

    from allllm.errors import ConfigError
    from allllm.model import Transformer
    from model_helpers import tiny_config

    torch.manual_seed(0)
    model = Transformer(tiny_config())
    allllm.to_hf(model, tmp_path / "new", torch.float16)
    with pytest.warns(DeprecationWarning, match="the model carries its config"):
        allllm.to_hf(model, model.config, tmp_path / "old", torch.float16)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "old" / name).read_bytes()
    other = tiny_config(num_layers=model.config.num_layers + 1)
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="does not describe"):
        warnings.simplefilter("ignore", DeprecationWarning)
        allllm.to_hf(model, other, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()
