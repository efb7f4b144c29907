"""Where a Hugging Face checkpoint is: a local folder, or a hub id fetched into the HF cache.

Hub ids are fetched with ``huggingface_hub.snapshot_download`` (safetensors
first, ``.bin`` only when a repository has nothing else); every way that can
fail — offline, gated, private, a wrong revision — is one line that says what
to do. The Hub is asked once first (``allllm.util.hub``): when it cannot be
reached the download is made from the HF cache only, with no network retries.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from allllm.errors import CheckpointError
from allllm.util import hub

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(@[\w./-]+)?$")
# What a hub download fetches: the config and HF's weight file names (model-0000x-of-0000y too).
SAFETENSORS_PATTERNS = ["config.json", "generation_config.json", "model*.safetensors*"]
BIN_PATTERNS = ["config.json", "generation_config.json", "pytorch_model*.bin*"]


def resolve_checkpoint(source: str | Path) -> Path:
    """A local directory holding ``config.json``: ``source`` itself, or a hub download of it.

    Hub ids may carry a revision: ``owner/name@revision``.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{path}: not a directory", "point at a Hugging Face model folder"
            )
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path}: no config.json", "point at a folder made by save_pretrained or to_hf"
            )
        return path
    if isinstance(source, Path) or text.startswith((".", "/", "~")) or not HUB_ID.match(text):
        raise CheckpointError(f"{text}: no such directory", "check the path (or give a hub id)")
    return _download(text)


def _download(hub_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = hub_id.partition("@")
    offline_hint = (
        f"not a local directory, and the Hugging Face hub ({hub.endpoint()}) cannot be reached "
        f"for it nor does the HF cache ({hub.cache_dir()}) hold it — download it where there is "
        f"internet (`hf download {repo_id} --local-dir DIR`) and set model.init_from to DIR (or "
        "pre-fill the HF cache there and point HF_HOME at it here)"
    )
    # unreachable: the HF cache only, at once (the library would retry for minutes first)
    local = not hub.hub_reachable(repo_id, "config.json", revision or None)
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision or None,
                allow_patterns=SAFETENSORS_PATTERNS,
                local_files_only=local,
            )
        )
        if not any(folder.glob("model*.safetensors")):
            folder = Path(
                snapshot_download(
                    repo_id,
                    revision=revision or None,
                    allow_patterns=BIN_PATTERNS,
                    local_files_only=local,
                )
            )
    except GatedRepoError:
        raise CheckpointError(
            f"{hub_id}: gated model", "accept its license on huggingface.co and `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{hub_id}: no such model on the Hugging Face hub (or it is private)",
            "check the id, or `hf auth login` for a private model",
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{hub_id}: no such revision {revision!r}") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        cause = "" if local else f" ({type(exc).__name__})"
        raise CheckpointError(f"{hub_id}: {offline_hint}{cause}") from None
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{hub_id}: the repository has no config.json")
    return folder


def read_hf_config(directory: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory."""
    path = directory / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: not found", "a Hugging Face model folder needs config.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
