"""SentencePiece: a local ``.model`` file, encoded with its own thread pool, never with BOS/EOS.

SentencePiece normalizes and splits on whitespace in ways no cut rule can
prove safe, so documents are always encoded whole (``cut_rule`` is None).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from allllm.config import TokenizerConfig
from allllm.errors import TokenizerError
from allllm.tokenizer._shared import default_num_threads, fingerprint_of, override_id
from allllm.tokenizer.base import TokenizerBackend


class SentencePieceTokenizer(TokenizerBackend):
    backend = "sentencepiece"
    concurrent_batches = True  # encode() releases the GIL: two threads encode twice as fast

    def __init__(self, cfg: TokenizerConfig) -> None:
        import sentencepiece as spm

        self._path = cfg.path
        path = Path(str(cfg.path)).expanduser()
        if not path.is_file():
            raise TokenizerError(
                f"tokenizer.path {cfg.path}: no such SentencePiece .model file",
                "check the path (train one with `allllm tokenizer train`)",
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TokenizerError(f"tokenizer.path {path}: cannot read: {exc.strerror}") from None
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError, ValueError) as exc:
            first = (str(exc).splitlines() or ["unreadable"])[0][:200]
            raise TokenizerError(
                f"{path}: not a SentencePiece model ({first})",
                "point tokenizer.path at a .model file, or pick the backend that fits the file",
            ) from None
        self._sp = sp
        self._proto = sp.serialized_model_proto()
        self._threads = default_num_threads()
        where = f"SentencePiece model {path}"
        self._bos = self._pick("bos", cfg.bos_token, sp.bos_id(), where)
        self._eos = self._pick("eos", cfg.eos_token, sp.eos_id(), where)
        self._pad = self._pick("pad", cfg.pad_token, sp.pad_id(), where)

    def _lookup(self, piece: str) -> int | None:
        idx = self._sp.piece_to_id(piece)  # unknown pieces map to the unk id
        return idx if self._sp.id_to_piece(idx) == piece else None

    def _pick(self, role: str, override: str | None, model_id: int, where: str) -> int | None:
        if override is not None:
            return override_id(role, override, self._lookup, where)
        return model_id if model_id >= 0 else None

    @property
    def path(self) -> str | None:
        return self._path

    def set_num_threads(self, n: int) -> None:
        self._threads = max(1, n)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(
            list(texts), out_type=int, add_bos=False, add_eos=False, num_threads=self._threads
        )

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int, add_bos=False, add_eos=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def fingerprint(self) -> str:
        """The serialized model: pieces, scores, normalizer rules and special ids."""
        return fingerprint_of(self.backend, [self._proto])
