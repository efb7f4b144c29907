"""``allllm generate``: continue a prompt with a trained model, streaming text as it is made.

Tokens come from :func:`allllm.model.generation.generate` (KV cache, greedy at
temperature 0, top-k / top-p sampling, stop at EOS). Text is decoded
incrementally by :class:`TextStream`: one token may be half of a UTF-8
character (byte tokenizers, byte-level BPE) and SentencePiece drops a leading
space when a piece is decoded alone, so each step decodes the generated ids
*together with a few prompt ids* and prints only the new suffix, holding back a
trailing U+FFFD that the next token may complete.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from allllm.errors import ConfigError

if TYPE_CHECKING:
    from allllm.config import Config
    from allllm.tokenizer.manager import TokenizerManager
    from allllm.use.trained import TrainedModel

REPLACEMENT = "\ufffd"
CONTEXT_IDS = 16  # prompt ids decoded with the new ones (SentencePiece spaces, byte sequences)


@dataclass
class SamplingSettings:
    """How tokens are chosen. ``temperature`` 0 is greedy; ``seed`` None picks one (reported)."""

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = 0.95
    seed: int | None = None

    def check(self) -> None:
        """Programming errors only: the CLI validates its options before they get here."""
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be at least 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


@dataclass
class GenerationResult:
    """What one generation produced (``generate --json`` prints ``to_dict()``)."""

    prompt: str
    text: str  # the continuation only
    step: int  # the checkpoint's step
    prompt_tokens: int
    new_tokens: int
    stopped_at_eos: bool
    prompt_truncated: int  # prompt ids dropped from the start to fit the context
    seed: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


class TextStream:
    """Turns a growing list of token ids into text that is safe to print piece by piece.

    Every ``REANCHOR`` ids whose text is complete, the decoded window restarts from the
    last ``CONTEXT_IDS`` ids, so a long generation costs linear, not quadratic, decoding.
    """

    REANCHOR = 256

    def __init__(self, tokenizer: TokenizerManager, context: Sequence[int] = ()) -> None:
        self._decode = tokenizer.decode
        self._anchor(list(context))
        self._done = ""  # text before the current anchor

    def _anchor(self, context: list[int]) -> None:
        self._context = context[-CONTEXT_IDS:]
        self._base = self._decode(self._context) if self._context else ""
        self._ids: list[int] = []
        self._printed = ""  # text printed since the anchor

    @property
    def printed(self) -> str:
        """All text handed out so far."""
        return self._done + self._printed

    def _text(self) -> str:
        full = self._decode(self._context + self._ids)
        return full[len(self._base) :] if full.startswith(self._base) else full

    def push(self, token_id: int) -> str:
        """Add one id; return the text that became final (possibly empty)."""
        self._ids.append(token_id)
        text = self._text()
        stable = text.rstrip(REPLACEMENT)  # an incomplete character may follow
        new = ""
        if len(stable) > len(self._printed) and stable.startswith(self._printed):
            new = stable[len(self._printed) :]
            self._printed = stable
        if len(self._ids) >= self.REANCHOR and text == self._printed:
            self._done += self._printed
            self._anchor(self._context + self._ids)
        return new

    def finish(self) -> str:
        """The rest of the text (a trailing U+FFFD is final now)."""
        text = self._text()
        new = text[len(self._printed) :] if text.startswith(self._printed) else ""
        self._printed += new
        return new


def prompt_ids(cfg: Config, tokenizer: TokenizerManager, prompt: str) -> list[int]:
    """The ids a prompt starts from, as documents start in training.

    BOS first when the config adds BOS to documents. An empty prompt otherwise starts
    from EOS — what precedes a document in packed rows — or BOS if there is no EOS.
    """
    ids = tokenizer.encode(prompt) if prompt else []
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    if cfg.tokenizer.add_bos and bos is not None:
        ids = [bos, *ids]
    if not ids:
        start = eos if eos is not None else bos
        if start is None:
            raise ConfigError(
                "the prompt is empty and the tokenizer has neither BOS nor EOS to start from",
                "give a prompt (--prompt TEXT)",
            )
        ids = [start]
    return ids


def fit_prompt(ids: list[int], max_new_tokens: int, context: int) -> tuple[list[int], int]:
    """Keep the prompt's last ids so that it leaves room for new tokens in the model's positions.

    The prompt keeps ``context - min(max_new_tokens, context // 2)`` ids at most: all of the
    context but the new tokens when they are few, at least half of it when they are many.
    """
    room = max(1, context - min(max_new_tokens, context // 2))
    dropped = max(0, len(ids) - room)
    return ids[dropped:], dropped


def generate_text(
    trained: TrainedModel,
    prompt: str,
    settings: SamplingSettings | None = None,
    *,
    on_text: Callable[[str], None] | None = None,
    use_cache: bool = True,
) -> GenerationResult:
    """Continue ``prompt`` with ``trained``'s model; ``on_text`` receives text as it is final.

    Longer than the model's positions, generation slides: when the context is full, the
    last half of it is kept and re-read (the model never sees more than its positions).
    ``use_cache=False`` recomputes the whole sequence for each token (a reference for tests).
    """
    import torch

    from allllm.model.generation import generate

    settings = settings or SamplingSettings()
    settings.check()
    cfg, tok = trained.cfg, trained.tokenizer
    context = cfg.model.max_position_embeddings
    ids, dropped = fit_prompt(prompt_ids(cfg, tok, prompt), settings.max_new_tokens, context)
    seed = settings.seed if settings.seed is not None else random.randrange(2**31)
    generator = torch.Generator(device=trained.device).manual_seed(seed)
    stream = TextStream(tok, ids)
    eos = tok.eos_id
    new_ids: list[int] = []

    def on_token(token: torch.Tensor) -> None:
        token_id = int(token[0])
        if token_id == eos:
            return
        new_ids.append(token_id)
        piece = stream.push(token_id)
        if piece and on_text is not None:
            on_text(piece)

    started = time.perf_counter()
    window, stopped = list(ids), False
    while len(new_ids) < settings.max_new_tokens and not stopped:
        if len(window) >= context:  # the cache is full: keep the last half as context
            window = window[-(context // 2) :]
        steps = min(settings.max_new_tokens - len(new_ids), context - len(window))
        out = generate(
            trained.model,
            torch.tensor(window, dtype=torch.long, device=trained.device),
            steps,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            generator=generator,
            eos_id=eos,
            on_token=on_token,
            use_cache=use_cache,
            vocab_limit=tok.vocab_size,
        )
        produced = out[len(window) :].tolist()
        stopped = eos is not None and eos in produced
        window += produced
    seconds = time.perf_counter() - started
    rest = stream.finish()
    if rest and on_text is not None:
        on_text(rest)
    return GenerationResult(
        prompt=prompt,
        text=stream.printed,
        step=trained.step,
        prompt_tokens=len(ids),
        new_tokens=len(new_ids),
        stopped_at_eos=stopped,
        prompt_truncated=dropped,
        seed=seed,
        seconds=seconds,
    )
