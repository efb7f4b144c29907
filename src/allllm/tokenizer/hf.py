"""Hugging Face tokenizers: a ``tokenizer.json`` file, a tokenizer folder, or a Hub id.

A ``tokenizer.json`` is loaded with the ``tokenizers`` library alone (no
transformers import, so it is fast). A folder or Hub id goes through
``AutoTokenizer``, which applies the folder's ``tokenizer_config.json``
(special tokens, prefix-space settings) exactly as transformers users see it;
allllm then keeps only its fast Rust tokenizer. Encoding uses a private copy
with ``encode_special_tokens = True`` (``<|endoftext|>`` in the text is ordinary
text), truncation and padding off, and ``add_special_tokens=False``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from allllm.config import TokenizerConfig
from allllm.errors import TokenizerError
from allllm.tokenizer._shared import WELL_KNOWN, fingerprint_of, first_present, override_id
from allllm.tokenizer.base import CutRule, TokenizerBackend
from allllm.tokenizer.cutting import hf_cut_rule
from allllm.util import hub

# owner/name (or a bare name) as the Hub spells repository ids
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

# the Hub answered but the load failed (a wrong id, a private or gated repository, ...)
_HUB_HINT = (
    "check the Hub id (`hf auth login` for a private or gated repository), or set "
    "tokenizer.path to a local tokenizer folder or tokenizer.json"
)

# tokenizer.json sections that never change the ids of encode(add_special_tokens=False):
# we turn truncation/padding off, skip the post-processor, and decoding is not encoding.
_NOT_ID_DECIDING = ("truncation", "padding", "post_processor", "decoder", "version")

# sidecar files of a tokenizer folder that name the special tokens, most specific first
_SIDECARS = ("tokenizer_config.json", "special_tokens_map.json")


def looks_like_hub_id(path: str) -> bool:
    """``owner/name`` or ``name``, with no filesystem markers (``./``, ``/``, ``~``, a suffix)."""
    if path.endswith((".json", ".model", ".tiktoken")) or ".." in path or "--" in path:
        return False
    return bool(_HUB_ID.match(path))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _sidecar_specials(folder: Path) -> dict[str, str | None]:
    """bos/eos/pad token strings a folder's tokenizer_config.json names (missing keys absent)."""
    found: dict[str, str | None] = {}
    for name in reversed(_SIDECARS):  # the more specific file wins
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # no sidecar (or an unreadable one): fall back to well-known names
        if not isinstance(data, dict):
            continue
        for role in ("bos", "eos", "pad"):
            if f"{role}_token" in data:
                found[role] = _token_content(data[f"{role}_token"])
    return found


def _load_json_file(path: Path) -> tuple[Any, dict[str, str | None]]:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers reports every failure as a bare Exception
        raise TokenizerError(
            f"{path}: not a loadable tokenizer.json ({_first_line(exc)})",
            "point tokenizer.path at a Hugging Face tokenizer.json, a tokenizer folder or a Hub id",
        ) from None
    return tok, _sidecar_specials(path.parent)


def _auto_tokenizer(source: str, trust_remote_code: bool, local_files_only: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        source, trust_remote_code=trust_remote_code, local_files_only=local_files_only
    )


def _not_fetched(source: str) -> TokenizerError:
    """The one line for a Hub tokenizer that is neither reachable nor in the HF cache."""
    return TokenizerError(
        f"cannot load Hugging Face tokenizer {source!r}: it could not be fetched, the Hub "
        f"({hub.endpoint()}) cannot be reached and the HF cache ({hub.cache_dir()}) does not "
        "hold it",
        f"set tokenizer.path to a local copy (where there is network: `hf download {source} "
        "tokenizer.json tokenizer_config.json --local-dir DIR`, then tokenizer.path=DIR), or "
        "pre-fill the HF cache there and point HF_HOME at it here",
    )


def _load_auto(source: str, trust_remote_code: bool, local: bool) -> tuple[Any, dict[str, Any]]:
    """A folder, or a Hub id: from the HF cache when it is there (no network), else the Hub —
    asked once first (``allllm.util.hub``) so that offline fails at once, not after retries."""
    tok = None
    if not local:
        try:
            tok = _auto_tokenizer(source, trust_remote_code, local_files_only=True)
        except Exception as exc:
            if _needs_remote_code(exc, trust_remote_code):  # cached; the Hub would say the same
                raise _cannot_load(source, exc, local, trust_remote_code) from None
            tok = None  # not (completely) in the HF cache: ask the Hub below
        if tok is None and not hub.hub_reachable(source, "tokenizer_config.json"):
            raise _not_fetched(source)
    if tok is None:
        try:
            tok = _auto_tokenizer(source, trust_remote_code, local_files_only=local)
        except Exception as exc:  # hub, network, cache and remote-code failures: cannot load
            if not local and hub.is_connection_error(exc):  # the network went during the load
                hub.note_unreachable()
                raise _not_fetched(source) from None
            raise _cannot_load(source, exc, local, trust_remote_code) from None
    backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    if backend is None:
        raise TokenizerError(
            f"{source!r} loads only as a slow (Python) tokenizer ({type(tok).__name__})",
            "allllm needs a fast tokenizer: use a folder or Hub id that has tokenizer.json",
        )
    specials = {role: getattr(tok, f"{role}_token", None) for role in ("bos", "eos", "pad")}
    return backend, {k: _token_content(v) for k, v in specials.items()}


def _needs_remote_code(exc: Exception, trust_remote_code: bool) -> bool:
    return not trust_remote_code and "trust_remote_code" in str(exc)


def _cannot_load(
    source: str, exc: Exception, local: bool, trust_remote_code: bool
) -> TokenizerError:
    """The one line for a tokenizer transformers could not load (the Hub answered, if asked)."""
    if _needs_remote_code(exc, trust_remote_code):
        hint = (
            "this tokenizer runs custom code: set tokenizer.trust_remote_code=true if you trust it"
        )
    elif local:
        hint = "check that the folder holds tokenizer.json or tokenizer files transformers can load"
    else:
        hint = _HUB_HINT
    return TokenizerError(
        f"cannot load {'the tokenizer folder' if local else 'Hugging Face tokenizer'} "
        f"{source!r}: {_first_line(exc)}",
        hint,
    )


def load_hf_tokenizer(cfg: TokenizerConfig) -> tuple[Any, dict[str, str | None]]:
    """The ``tokenizers.Tokenizer`` behind ``cfg.path`` and the special tokens its files name."""
    raw = str(cfg.path)
    path = Path(raw).expanduser()
    if path.is_file():
        return _load_json_file(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").exists():
            return _load_json_file(path / "tokenizer.json")  # a bare file in a folder
        return _load_auto(str(path), cfg.trust_remote_code, local=True)
    if not looks_like_hub_id(raw):
        raise TokenizerError(
            f"tokenizer.path {raw}: no such file or folder",
            "check the path; a Hub id looks like owner/name (e.g. microsoft/phi-2)",
        )
    return _load_auto(raw, cfg.trust_remote_code, local=False)


def _encoding_copy(tok: Any) -> Any:
    """A private copy that treats special-looking text as text and never truncates or pads."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tok.to_str())
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = True
    return copy


class HFTokenizer(TokenizerBackend):
    backend = "hf"

    def __init__(self, cfg: TokenizerConfig) -> None:
        tok, named = load_hf_tokenizer(cfg)
        self._path = cfg.path
        self._tok = _encoding_copy(tok)
        self._spec: dict[str, Any] = json.loads(self._tok.to_str())
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values(), default=-1) + 1
        self._fingerprint: str | None = None
        self._sequential = False
        where = f"tokenizer {cfg.path}"
        overrides = {"bos": cfg.bos_token, "eos": cfg.eos_token, "pad": cfg.pad_token}
        ids: dict[str, int | None] = {}
        for role, override in overrides.items():
            if override is not None:
                ids[role] = override_id(role, override, self._tok.token_to_id, where)
            elif role in named:  # the tokenizer's own files say which token (or none)
                token = named[role]
                ids[role] = self._tok.token_to_id(token) if token else None
            else:
                ids[role] = first_present(WELL_KNOWN[role], self._tok.token_to_id)
        self._bos, self._eos, self._pad = ids["bos"], ids["eos"], ids["pad"]

    @property
    def path(self) -> str | None:
        return self._path

    def set_num_threads(self, n: int) -> None:
        """1: encode in the calling thread — through the batch call when the library's Rust
        pool has one thread (``RAYON_NUM_THREADS=1``: ~22% less CPU than a call per
        text). More: that pool, whose size is fixed when it first starts
        (``RAYON_NUM_THREADS``, default all cores)."""
        self._sequential = n <= 1 and os.environ.get("RAYON_NUM_THREADS") != "1"

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._sequential or len(texts) == 1:
            return [self._tok.encode(t, add_special_tokens=False).ids for t in texts]
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def fingerprint(self) -> str:
        """Canonical JSON of the id-deciding parts of tokenizer.json (model, added tokens, ...)."""
        if self._fingerprint is None:
            spec = {k: v for k, v in self._spec.items() if k not in _NOT_ID_DECIDING}
            canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            self._fingerprint = fingerprint_of(self.backend, [canonical.encode("utf-8")])
        return self._fingerprint

    @property
    def cut_rule(self) -> CutRule | None:
        return hf_cut_rule(self._spec)
