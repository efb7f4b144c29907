"""Config validation, family defaults, lookup and analytic sizes (docs/design.md: workspace; config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allllm.config import (
    ARCH_DEFAULTS,
    Config,
    find_config,
    init_config,
    load_config,
    load_config_file,
    parse_duration,
    preset_names,
)
from allllm.errors import ConfigError
from allllm.model.sizes import count_parameters

REPO = Path(__file__).resolve().parents[1]


def minimal(**model: object) -> dict:
    base = {"vocab_size": 300, "hidden_size": 64, "num_layers": 2, "num_heads": 4}
    base.update(model)
    return {"model": base}


def write(tmp_path: Path, data: object, name: str = "m.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_presets_are_the_repo_configs() -> None:
    repo_presets = {p.stem for p in (REPO / "configs").glob("*.json")}
    assert {"phi-2", "phi-1_5", "tiny"} <= set(preset_names())
    assert set(preset_names()) == repo_presets


@pytest.mark.parametrize("name", ["phi-2", "phi-1_5", "tiny"])
def test_presets_validate(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no local configs: the packaged preset is used
    cfg = load_config(model=name)
    assert cfg.name == name
    assert cfg.checkpoint_dir == f"checkpoints/{name}"


def test_phi2_parameter_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(model="phi-2")
    # microsoft/phi-2 has 2,779,683,840 parameters.
    assert count_parameters(cfg.model) == 2_779_683_840
    phi15 = load_config(model="phi-1_5")
    assert count_parameters(phi15.model) == 1_418_270_720  # microsoft/phi-1_5
    tiny = load_config(model="tiny")
    assert 1_000_000 < count_parameters(tiny.model) < 10_000_000
    assert tiny.tokenizer.backend == "byte" and tiny.data.seq_len == 256


def test_family_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = load_config_file(write(tmp_path, minimal(arch="llama")))
    for key, value in ARCH_DEFAULTS["llama"].items():
        assert getattr(cfg.model, key) == value
    assert cfg.model.num_kv_heads == 4
    assert cfg.model.intermediate_size == 256  # 8/3*64 rounded up to 256
    over = load_config_file(write(tmp_path, minimal(arch="llama", norm="layernorm", bias=True)))
    assert over.model.norm == "layernorm" and over.model.bias is True
    phi = load_config_file(write(tmp_path, minimal()))
    assert phi.model.parallel_residual and phi.model.intermediate_size == 256


def test_name_and_checkpoint_defaults(tmp_path: Path) -> None:
    cfg = load_config_file(write(tmp_path, minimal(), "my-model.json"))
    assert cfg.name == "my-model"
    assert cfg.checkpoint_dir == "checkpoints/my-model"
    explicit = load_config_file(write(tmp_path, {**minimal(), "checkpoint_dir": "/ckpt/x"}))
    assert explicit.checkpoint_dir == "/ckpt/x"


BAD_CONFIGS = [
    ({**minimal(), "extra": 1}, "extra: unknown key"),
    (minimal(hidden_sise=3), "model.hidden_sise: unknown key"),
    (minimal(hidden_size="big"), "model.hidden_size"),
    (minimal(num_layers=-2), "model.num_layers"),
    (minimal(hidden_size=66), "not divisible by num_heads"),
    (minimal(num_kv_heads=3), "not divisible by num_kv_heads"),
    (minimal(partial_rotary_factor=0.05), "rotary dims"),
    (minimal(vocab_size=10**12), "model.vocab_size"),
    (minimal(arch="gpt"), "model.arch"),
    ({**minimal(), "data": {"seq_len": 4096}}, "exceeds model.max_position_embeddings"),
    ({**minimal(), "data": {"formats": []}}, "data.formats"),
    ({**minimal(), "data": {"formats": ["parquet"]}}, "data.formats[0]"),
    ({**minimal(), "train": {"micro_batch_size": 3, "batch_size": 32}}, "does not divide"),
    ({**minimal(), "train": {"lr": 1e-4, "min_lr": 1e-3}}, "min_lr"),
    ({**minimal(), "train": {"betas": [0.9, 1.5]}}, "beta"),
    ({**minimal(), "train": {"max_time": "soon"}}, "cannot read duration"),
    ({**minimal(), "tokenizer": {"backend": "hf"}}, "needs tokenizer.path"),
    ({**minimal(), "tokenizer": {"backend": "byte", "path": "x"}}, "takes no path"),
    ({**minimal(), "tokenizer": {"backend": "tiktoken", "path": "r.tiktoken"}}, "pattern"),
    (
        {**minimal(), "tokenizer": {"backend": "hf", "path": "x", "pattern": "a"}},
        "only for the tiktoken",
    ),
    ({**minimal(), "name": "../evil"}, "name"),
    ({"model": {"hidden_size": 64}}, "model.vocab_size: required key is missing"),
    ([1, 2], "must be a JSON object"),
]


@pytest.mark.parametrize(("data", "expected"), BAD_CONFIGS)
def test_bad_config_is_one_line_naming_the_field(
    tmp_path: Path, data: object, expected: str
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert expected in message


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "model": {\n    "vocab_size": 300,\n  }\n}\n')
    with pytest.raises(ConfigError, match=r"line 4, column 3"):
        load_config_file(path)


def test_missing_file_and_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="config file not found"):
        find_config(config=tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="no config named 'nope'"):
        find_config(model="nope")
    with pytest.raises(ConfigError, match="either --model or --config"):
        find_config(model="tiny", config="x.json")
    with pytest.raises(ConfigError, match="no model given"):
        find_config()
    with pytest.raises(ConfigError, match="not a config name"):
        find_config(model="../tiny")
    # a local config shadows the preset of the same name
    (tmp_path / "configs").mkdir()
    write(tmp_path / "configs", {**minimal(), "name": "tiny"}, "tiny.json")
    assert find_config(model="tiny").kind == "local"
    assert load_config(model="tiny").model.hidden_size == 64


def test_init_config_rewrites_name_and_checkpoint_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = init_config("my-phi", "phi-2")
    data = json.loads(path.read_text())
    assert path == Path("configs/my-phi.json")
    assert data["name"] == "my-phi" and data["checkpoint_dir"] == "checkpoints/my-phi"
    assert load_config(model="my-phi").model.hidden_size == 2560
    before = path.read_text()
    with pytest.raises(ConfigError, match="already exists"):
        init_config("my-phi", "tiny")
    assert path.read_text() == before  # never overwritten without --force
    init_config("my-phi", "tiny", force=True)
    assert load_config(model="my-phi").model.hidden_size == 256
    with pytest.raises(ConfigError, match="not a valid config name"):
        init_config("a/b", "tiny")


def test_durations() -> None:
    assert parse_duration(90) == 90.0
    assert parse_duration("90") == 90.0
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("45s") == 45.0
    assert parse_duration("01:00:05") == 3605.0
    assert parse_duration("2:30") == 150.0
    for bad in ("", "soon", "-5", 0, True):
        with pytest.raises(ValueError):
            parse_duration(bad)  # type: ignore[arg-type]


def test_config_roundtrips_through_json() -> None:
    cfg = Config.model_validate(minimal(arch="llama"))
    again = Config.model_validate(cfg.to_json_dict())
    assert again == cfg
