"""The trained model of a config at one checkpoint, with the tokenizer it was trained with.

``generate``, ``eval`` and ``export`` all start here, so they agree on which
checkpoint "latest" is, refuse the same mistakes with the same one-line
errors (no checkpoint yet, a step that does not exist, a config whose
architecture or tokenizer changed since the checkpoint was written), and load
the weights the same way: into an uninitialised model (no time spent on an
init the checkpoint overwrites), in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from allllm.errors import CheckpointError, TokenizerError

if TYPE_CHECKING:
    import torch

    from allllm.config import Config
    from allllm.model.transformer import Transformer
    from allllm.tokenizer.manager import TokenizerManager
    from allllm.train.checkpoint import CheckpointRef
    from allllm.train.state import TrainState

Warn = Callable[[str], None]


def _train_hint(cfg: Config) -> str:
    return f"train first: allllm train --model {cfg.name} --only-new"


def find_trained_checkpoint(
    cfg: Config, step: int | None = None, warn: Warn | None = None
) -> CheckpointRef:
    """The checkpoint at ``step``, or the latest complete one; a one-line error if there is none."""
    from allllm.train.checkpoint import check_files, latest_checkpoint, list_checkpoints

    directory = cfg.checkpoint_path
    refs = list_checkpoints(directory)
    if step is None:
        ref = latest_checkpoint(directory, warn=warn)
        if ref is None:
            what = "no complete checkpoint" if refs else "no checkpoint"
            raise CheckpointError(f"{what} in {directory}", _train_hint(cfg))
        return ref
    found = [r for r in refs if r.step == step]
    if not found:
        steps = [r.step for r in refs if r.complete]
        hint = (
            f"available steps: {', '.join(map(str, steps))}" if steps else _train_hint(cfg)
        ) + " (or leave out --step for the latest)"
        raise CheckpointError(f"no checkpoint at step {step} in {directory}", hint)
    ref = found[0]
    if not ref.complete:
        raise CheckpointError(
            f"{ref.path}: incomplete checkpoint (its save was interrupted)",
            "pick another --step, or leave it out for the latest complete one",
        )
    problem = check_files(ref)
    if problem:
        raise CheckpointError(
            f"{ref.path}: {problem}", "pick another --step, or leave it out for the latest"
        )
    return ref


@dataclass
class TrainedModel:
    """A checkpoint's weights in a model (eval mode), its tokenizer and where they came from."""

    cfg: Config
    model: Transformer
    tokenizer: TokenizerManager
    checkpoint: CheckpointRef
    state: TrainState  # the checkpoint's trainer state
    device: torch.device

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def tokens_seen(self) -> int:
        return self.state.tokens_seen


def load_tokenizer_for(cfg: Config, state: TrainState, where: str) -> TokenizerManager:
    """The config's tokenizer, refused when it is not the one the checkpoint was trained with."""
    from allllm.tokenizer.manager import TokenizerManager

    tokenizer = TokenizerManager.from_config(cfg.tokenizer)
    tokenizer.check_vocab(cfg.model.vocab_size)
    theirs = state.tokenizer_fingerprint
    if theirs and theirs != tokenizer.fingerprint:
        raise TokenizerError(
            f"the config's tokenizer differs from the one {where} was trained with",
            "restore the tokenizer settings the model was trained with (its ids mean other text)",
        )
    return tokenizer


def load_trained(
    cfg: Config,
    step: int | None = None,
    *,
    device: str | torch.device | None = None,
    warn: Warn | None = None,
) -> TrainedModel:
    """Load the model of ``cfg`` at ``step`` (default: the latest complete checkpoint).

    Weights stay fp32 (the checkpoint's precision); ``device`` is ``cpu``, ``cuda``,
    ``cuda:N``, ``mps`` or None for the best available.
    """
    import torch

    from allllm.model.transformer import empty_model
    from allllm.train.model_setup import load_checkpoint_weights
    from allllm.train.precision import pick_device
    from allllm.train.start import architecture_differences

    ref = find_trained_checkpoint(cfg, step, warn=warn)
    state = ref.read_state()
    diffs = architecture_differences(cfg, state.config)
    if diffs:
        raise CheckpointError(
            f"the config's architecture differs from checkpoint {ref.path}: " + "; ".join(diffs),
            "restore those model fields (the weights only fit the architecture they were "
            "trained with)",
        )
    tokenizer = load_tokenizer_for(cfg, state, str(ref.path))
    target = device if isinstance(device, torch.device) else pick_device(device)
    model = empty_model(cfg.model, device=target)
    load_checkpoint_weights(model, ref)  # either layout, one tensor at a time
    model.eval()
    return TrainedModel(cfg, model, tokenizer, ref, state, target)
