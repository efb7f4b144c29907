"""Config values keep their JSON types, and errors name the user's JSON path (docs/design.md: config).

Strict bool / int / str: a quoting slip (``"add_eos": "yes"``, ``"seq_len": "64"``)
is an error naming the key and the expected type, never a silent setting. An int
still fills a float and a JSON list a tuple. Every shipped preset, every
``config init`` output and the config snapshot of a 0.1.0 checkpoint still validate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from allllm.config import (
    Config,
    TrainConfig,
    describe_validation_error,
    explain,
    init_config,
    load_config,
    load_config_file,
    parse_config,
    preset_names,
)
from allllm.errors import ConfigError
from cli_helpers import run_cli

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v1_workspace"
MODEL = {"vocab_size": 300, "hidden_size": 64, "num_layers": 2, "num_heads": 4}


def with_(section: str, **values: Any) -> dict[str, Any]:
    """A minimal valid config with ``values`` set in ``section``."""
    if section == "model":
        return {"model": {**MODEL, **values}}
    return {"model": dict(MODEL), section: values}


def parse(data: dict[str, Any]) -> Config:
    return parse_config(data, "t.json", default_name="t")


def error_of(data: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


WRONG_TYPES = [
    # (section, key, value, path in the message, words that must be in it)
    (
        "tokenizer",
        "add_eos",
        "yes",
        "tokenizer.add_eos",
        'boolean (true/false), got the string "yes"',
    ),
    ("train", "compile", 1, "train.compile", "expected a boolean (true/false), got the number 1"),
    (
        "data",
        "seq_len",
        64.0,
        "data.seq_len",
        "expected an integer, got the number 64.0 — write 64",
    ),
    ("data", "seq_len", "64", "data.seq_len", 'got the string "64" — write 64 without quotes'),
    ("data", "seq_len", True, "data.seq_len", "expected an integer, got the boolean true"),
    (
        "train",
        "max_steps",
        2.5,
        "train.max_steps",
        "expected an integer or null, got the number 2.5",
    ),
    ("train", "seed", "7", "train.seed", "expected an integer"),
    (
        "data",
        "text_field",
        3,
        "data.text_field",
        "expected a string, got the number 3 — put it in quotes",
    ),
    ("model", "init_from", 3, "model.init_from", "expected a string or null, got the number 3"),
    ("train", "lr", "3e-4", "train.lr", 'expected a number, got the string "3e-4"'),
    ("train", "lr", True, "train.lr", "expected a number, got the boolean true"),
    ("train", "betas", [0.9, "0.95"], "train.betas[1]", 'expected a number, got the string "0.95"'),
    ("train", "betas", [0.9], "train.betas", "expected a list of 2 numbers, got a list of 1 item"),
    ("train", "adam_eps", "1e-8", "train.adam_eps", "expected a number"),
    ("train", "max_skipped_steps", 1.0, "train.max_skipped_steps", "expected an integer"),
    ("data", "formats", "bin", "data.formats", 'expected a list of values from "jsonl", "bin"'),
]


@pytest.mark.parametrize(("section", "key", "value", "path", "words"), WRONG_TYPES)
def test_a_value_of_the_wrong_json_type_is_an_error_naming_path_and_type(
    tmp_path: Path, section: str, key: str, value: Any, path: str, words: str
) -> None:
    message = error_of(with_(section, **{key: value}), tmp_path)
    assert message.startswith(f"{path}: ")
    assert words in message


def test_ints_fill_floats_and_lists_fill_tuples_but_strings_fill_neither() -> None:
    cfg = parse(with_("train", lr=1, min_lr=0, betas=[0.9, 0.95], max_time=90))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.9, 0.95) and cfg.train.max_time == 90.0
    model = parse(with_("model", rope_theta=500000, dropout=0, partial_rotary_factor=1)).model
    assert model.rope_theta == 500000.0 and isinstance(model.rope_theta, float)
    assert parse(with_("train", max_time="1h30m")).train.max_time == 5400.0
    for lax in ({"lr": "1"}, {"betas": ["0.9", "0.95"]}, {"betas": [True, 0.95]}):
        with pytest.raises(ConfigError, match="expected a number"):
            parse(with_("train", **lax))


@pytest.mark.parametrize("raw_path", ["data/raw", "corpus/*.txt", ["a.txt", "b/"]])
def test_union_and_optional_keys_accept_what_they_did_of_their_json_type(
    raw_path: object,
) -> None:
    cfg = parse(with_("data", raw_path=raw_path, eval_shards="data/eval-*"))
    assert cfg.data.raw_path == raw_path
    nulls = parse(with_("train", max_steps=None, max_tokens=None, max_time=None))
    assert nulls.train.max_steps is None and nulls.model.init_from is None
    assert parse(with_("train", max_steps=5, max_tokens=10**9)).train.max_steps == 5
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected an integer or null"):
        parse(with_("train", max_steps="5"))


def test_union_errors_name_the_json_path_not_pydantic_tags(tmp_path: Path) -> None:
    message = error_of(with_("data", raw_path=3), tmp_path)
    assert message.startswith(
        "data.raw_path: expected a string or a list of strings, got the number 3"
    )
    assert ".str" not in message and "list[str]" not in message
    assert "more error" not in message  # one union, one problem
    element = error_of(with_("data", raw_path=["a.txt", 3]), tmp_path)
    assert element.startswith("data.raw_path[1]: expected a string, got the number 3")
    assert "list[str]" not in element and "more error" not in element
    assert error_of(with_("data", raw_path={"a": 1}), tmp_path).startswith(
        "data.raw_path: expected a string or a list of strings, got an object"
    )


def test_validator_wrapped_union_members_are_hidden_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """``function-after[...]`` tags (a union member with its own validator) never show."""

    class Probe(BaseModel):
        model_config = ConfigDict(strict=True)
        anchor: Annotated[str, AfterValidator(str.strip)] | list[str] | None = None

    for known in (False, True):  # without and with the model to resolve types
        if known:
            monkeypatch.setitem(explain._SECTIONS, "Probe", Probe)
        with pytest.raises(ValidationError) as info:
            Probe(anchor=["x", 4])
        line = describe_validation_error(info.value, "p.json")
        assert line.startswith("p.json: anchor[1]: expected a string, got the number 4")
        with pytest.raises(ValidationError) as info:
            Probe(anchor=4)
        line = describe_validation_error(info.value, "p.json")
        assert line.startswith("p.json: anchor: expected a string") and "a list" in line
        assert "function-" not in line


def test_other_error_kinds_keep_their_one_line_form(tmp_path: Path) -> None:
    assert error_of(with_("model", hidden_sise=3), tmp_path).startswith(
        "model.hidden_sise: unknown key"
    )
    assert error_of(with_("model", **{"hidden size": 3}), tmp_path).startswith(
        'model["hidden size"]: unknown key'
    )
    assert error_of(with_("train", adam_eps=0), tmp_path).startswith(
        "train.adam_eps: must be greater than 0, got the number 0"
    )
    assert error_of(with_("train", max_skipped_steps=-1), tmp_path).startswith(
        "train.max_skipped_steps: must be greater than or equal to 0"
    )
    assert error_of(with_("data", formats=["parquet"]), tmp_path).startswith(
        "data.formats[0]: must be 'jsonl' or 'bin', got the string \"parquet\""
    )
    assert error_of({"model": 3}, tmp_path).startswith(
        "model: expected an object, got the number 3"
    )
    # a list is no duration: a one-line error, not a crash inside the duration parser
    assert error_of(with_("train", max_time=[60]), tmp_path).startswith(
        "train.max_time: max_time must be a number of seconds"
    )


def test_new_train_keys_have_their_defaults() -> None:
    train = TrainConfig()
    assert train.adam_eps == 1e-8 and train.max_skipped_steps == 5
    again = TrainConfig(adam_eps=1e-6, max_skipped_steps=0)  # 0: never stop
    assert again.adam_eps == 1e-6 and again.max_skipped_steps == 0


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_and_its_config_init_copy_validate(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(model=name)
    assert cfg.train.adam_eps == 1e-8 and cfg.train.max_skipped_steps == 5
    path = init_config(f"my-{name}", name)
    copy = load_config_file(path)
    assert copy.name == f"my-{name}"
    assert copy.model == cfg.model and copy.train == cfg.train and copy.data == cfg.data
    # the resolved config (as `config show --json` prints it) validates again
    assert Config.model_validate(copy.to_json_dict()) == copy


@pytest.mark.parametrize("step", ["step-00000006", "step-00000008"])
def test_a_v1_checkpoints_config_snapshot_still_validates(step: str) -> None:
    state = json.loads(
        (FIXTURE / "checkpoints" / "fixture" / step / "trainer_state.json").read_text()
    )
    snapshot = state["config"]
    cfg = parse_config(snapshot, f"{step} snapshot")
    assert cfg.train.betas == (0.9, 0.95) and cfg.data.raw_path == "data/raw"
    # train/session.py re-validates a pending run's train section on its own
    train = TrainConfig.model_validate(snapshot["train"])
    assert train.adam_eps == 1e-8 and train.max_skipped_steps == 5  # keys 0.1.0 did not know
    assert load_config_file(FIXTURE / "configs" / "fixture.json").model == cfg.model


@pytest.mark.parametrize(
    "args",
    [["config", "show"], ["config", "show", "--json"], ["train", "--dry-run"], ["status"]],
)
def test_cli_reports_a_wrongly_typed_value_in_one_line(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(with_("tokenizer", add_eos="yes")))
    code, out, err = run_cli([*args, "--config", str(path)], capsys)
    assert code == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert f"{path}: tokenizer.add_eos: expected a boolean (true/false)" in lines[0]
