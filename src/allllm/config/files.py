"""Finding, reading and writing config files: ``configs/<name>.json`` and packaged presets.

Every verb starts here, so errors name the file and the JSON path and say how
to fix them. Presets ship as the ``allllm.presets`` package and are read with
``importlib.resources``; a local ``configs/<name>.json`` shadows a preset of
the same name. The lookup rules are in docs/design.md (workspace).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from allllm.config.explain import describe_validation_error
from allllm.config.sections import NAME_PATTERN, Config
from allllm.errors import ConfigError

CONFIG_DIR = "configs"

# -- loading and lookup -----------------------------------------------------------------------


def parse_config(data: Any, source: str, default_name: str | None = None) -> Config:
    """Validate already-parsed JSON data as a Config; errors name ``source`` and the JSON path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a JSON object, got {type(data).__name__}")
    if default_name is not None and "name" not in data:
        data = {"name": default_name, **data}
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None
    if cfg.name is None:
        raise ConfigError(f"{source}: name: required key is missing — add a name")
    return cfg


def read_json_file(path: Path) -> Any:
    """Parse a JSON file; broken JSON is reported with its line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            "fix the JSON syntax (no comments or trailing commas)",
        ) from None


def load_config_file(path: str | Path) -> Config:
    """Load and validate a config file; ``name`` defaults to the file's stem."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a config .json file")
    data = read_json_file(path)
    return parse_config(data, str(path), default_name=path.stem)


@dataclass(frozen=True)
class ConfigSource:
    """Where a config was found: a local file or a packaged preset."""

    name: str
    kind: Literal["local", "preset"]
    path: Path | None  # local file
    resource: str | None = None  # preset file name

    def describe(self) -> str:
        return str(self.path) if self.kind == "local" else f"preset {self.name}"

    def load(self) -> Config:
        if self.kind == "local":
            assert self.path is not None
            return load_config_file(self.path)
        data = json.loads(_preset_text(self.name))
        return parse_config(data, f"preset {self.name}", default_name=self.name)

    def raw(self) -> dict[str, Any]:
        if self.kind == "local":
            assert self.path is not None
            return read_json_file(self.path)
        return json.loads(_preset_text(self.name))


def _preset_files() -> dict[str, Any]:
    from importlib import resources

    root = resources.files("allllm.presets")
    return {
        entry.name.removesuffix(".json"): entry
        for entry in root.iterdir()
        if entry.name.endswith(".json")
    }


def _preset_text(name: str) -> str:
    files = _preset_files()
    if name not in files:
        raise ConfigError(f"no preset named {name!r}")
    return files[name].read_text(encoding="utf-8")


def preset_names() -> list[str]:
    """The presets shipped inside the package (sorted)."""
    return sorted(_preset_files())


def local_config_paths(root: Path | None = None) -> list[Path]:
    """``./configs/*.json`` in the workspace (sorted)."""
    folder = (root or Path.cwd()) / CONFIG_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if p.is_file())


def find_config(model: str | None = None, config: str | Path | None = None) -> ConfigSource:
    """Resolve ``--model NAME`` / ``--config PATH`` per docs/design.md (workspace)."""
    if model and config:
        raise ConfigError("give either --model or --config, not both")
    if config:
        path = Path(config)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found", "check the --config path")
        return ConfigSource(name=path.stem, kind="local", path=path)
    if not model:
        raise ConfigError(
            "no model given", "pass --model NAME (see `allllm config list`) or --config PATH"
        )
    if not NAME_PATTERN.match(model):
        raise ConfigError(
            f"--model {model!r} is not a config name",
            "use a name from `allllm config list`, or --config PATH for a file",
        )
    local = Path(CONFIG_DIR) / f"{model}.json"
    if local.is_file():
        return ConfigSource(name=model, kind="local", path=local)
    if model in _preset_files():
        return ConfigSource(name=model, kind="preset", path=None, resource=f"{model}.json")
    known = sorted({p.stem for p in local_config_paths()} | set(preset_names()))
    raise ConfigError(
        f"no config named {model!r}: no {local} and no such preset",
        f"known: {', '.join(known)}; create one with `allllm config init {model} --from tiny`",
    )


def load_config(model: str | None = None, config: str | Path | None = None) -> Config:
    """Find and validate a config: the one call every verb starts with."""
    return find_config(model, config).load()


def iter_known_configs() -> Iterator[ConfigSource]:
    """Local configs first, then presets not shadowed by a local file of the same name."""
    seen: set[str] = set()
    for path in local_config_paths():
        seen.add(path.stem)
        yield ConfigSource(name=path.stem, kind="local", path=path)
    for name in preset_names():
        if name not in seen:
            yield ConfigSource(name=name, kind="preset", path=None, resource=f"{name}.json")


def init_config(new_name: str, from_name: str, force: bool = False) -> Path:
    """Write ``configs/NEW.json`` from a preset or local config, renamed for NEW.

    ``name`` and ``checkpoint_dir`` are rewritten so two models never share a
    checkpoint directory. An existing file is never overwritten unless ``force``.
    """
    if not NAME_PATTERN.match(new_name):
        raise ConfigError(
            f"{new_name!r} is not a valid config name",
            "use letters, digits, '.', '_' and '-'",
        )
    source = find_config(model=from_name)
    source.load()  # validate before copying
    data = source.raw()
    data["name"] = new_name
    data["checkpoint_dir"] = f"checkpoints/{new_name}"
    target = Path(CONFIG_DIR) / f"{new_name}.json"
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists", "pick another name or pass --force")
    parse_config(dict(data), str(target))  # the result must validate too
    from allllm.util.atomic import atomic_write_text

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write: {exc.strerror}") from None
    return target
