"""parallelize(): checkpointing, compile and DDP/FSDP2 applied from outside, names unchanged.

A checkpoint saved under one combination of ``activation_checkpointing``,
``compile``, DDP and FSDP must load under any other (README lets a user toggle
them between runs), so no combination may rename a parameter. DDP and FSDP2 are
applied in a one-rank gloo group here; the two-rank runs are in
test_train_distributed.py.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from allllm.config import TrainConfig
from allllm.model import Transformer
from allllm.train.distributed import DistInfo
from allllm.train.parallelize import parallelize
from allllm.train.state_dicts import model_state, optimizer_state
from model_helpers import CONFIGS, tiny_config
from train_helpers import add_raw, make_workspace
from use_helpers import inside

#: "data parallel" to parallelize(); the group it builds on has one rank (see the fixture)
PARALLEL = DistInfo(rank=0, world_size=2)


@pytest.fixture(scope="module")
def one_rank_group() -> Iterator[None]:
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_config(**CONFIGS["llama-gqa"]))


COMBINATIONS = [
    combo
    for combo in itertools.product([False, True], [False, True], [None, "ddp", "fsdp"])
    if combo != (False, False, None)
]


@pytest.mark.parametrize(("checkpointing", "compile_", "parallel"), COMBINATIONS)
def test_no_combination_renames_a_parameter(
    one_rank_group: None, checkpointing: bool, compile_: bool, parallel: str | None
) -> None:
    plain = _model()
    names = [n for n, _ in plain.named_parameters()]
    keys = list(plain.state_dict())
    train = TrainConfig(
        activation_checkpointing=checkpointing, compile=compile_, fsdp=parallel == "fsdp"
    )
    model = parallelize(_model(), train, PARALLEL if parallel else None)
    assert isinstance(model, Transformer)
    assert [n for n, _ in model.named_parameters()] == names
    assert list(model.state_dict()) == keys
    assert sorted(model_state(model)) == sorted(keys)  # what a checkpoint holds
    if not compile_:  # compiling needs a C compiler and minutes on a CPU: names only there
        ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(1))
        loss_sum, count = model(ids)
        (loss_sum / count).backward()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        optimizer.step()
        assert sorted(optimizer_state(model, optimizer)["state"]) == sorted(names)
        torch.testing.assert_close(model.logits(ids).shape, (2, 12, 101))


def test_accumulation_micro_steps_reduce_no_gradients_under_fsdp(one_rank_group: None) -> None:
    """The no-sync block must hold the backward: FSDP2 reads its flag when gradients reduce.

    Under FSDP2 a reduced gradient lands on the sharded parameter's ``.grad``; a micro-step
    that skipped the reduction leaves it unset until the step that syncs.
    """
    from allllm.train.parallelize import gradient_sync

    model = parallelize(_model(), TrainConfig(fsdp=True), PARALLEL)
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(3))
    for sync in (False, True):
        with gradient_sync(model, sync=sync):
            loss_sum, count = model(ids)
            (loss_sum / count).backward()
        reduced = [p.grad is not None for p in model.parameters()]
        assert all(reduced) if sync else not any(reduced), f"sync={sync}"


def test_checkpointed_model_computes_what_the_plain_one_does() -> None:
    ids = torch.randint(0, 101, (3, 16), generator=torch.Generator().manual_seed(2))
    results = []
    for checkpointing in (False, True):
        model = parallelize(_model(), TrainConfig(activation_checkpointing=checkpointing))
        loss_sum, count = model(ids)
        (loss_sum / count).backward()
        results.append((loss_sum.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


def _two_runs(root: Path, checkpointing_in_run_2: bool) -> dict[str, torch.Tensor]:
    from allllm.config import load_config
    from allllm.data.tokenize.run import tokenize
    from allllm.train.checkpoint import latest_checkpoint, load_model_state
    from allllm.train.options import QuietReporter, TrainOptions
    from allllm.train.session import train

    make_workspace(root, n_files=1, words=400)
    with inside(root):
        tokenize(load_config(model="micro"))
        train(load_config(model="micro"), TrainOptions(only_new=True), QuietReporter())
        add_raw(root, "part9.txt", seed=9, words=400)
        path = root / "configs" / "micro.json"
        cfg = json.loads(path.read_text())
        cfg["train"]["activation_checkpointing"] = checkpointing_in_run_2
        path.write_text(json.dumps(cfg))
        tokenize(load_config(model="micro"))
        result = train(load_config(model="micro"), TrainOptions(only_new=True), QuietReporter())
        assert result.status == "trained" and len(result.runs) == 1
        ref = latest_checkpoint(Path("checkpoints/micro"))
        assert ref is not None
        return load_model_state(ref)


def test_turning_checkpointing_on_between_runs_trains_the_same_weights(tmp_path: Path) -> None:
    plain = _two_runs(tmp_path / "plain", checkpointing_in_run_2=False)
    toggled = _two_runs(tmp_path / "toggled", checkpointing_in_run_2=True)
    assert plain.keys() == toggled.keys()
    assert all(torch.equal(plain[k], toggled[k]) for k in plain)


def test_ddp_reduces_into_its_buckets_in_place(
    one_rank_group: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No second fp32 copy of every gradient: DDP is built with gradient_as_bucket_view."""
    seen: list[dict] = []
    real = torch.nn.parallel.DistributedDataParallel.__init__

    def record(self: torch.nn.Module, *args: object, **kwargs: object) -> None:
        seen.append(kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.parallel.DistributedDataParallel, "__init__", record)
    model = parallelize(_model(), TrainConfig(), PARALLEL)
    model(torch.randint(0, 101, (1, 8)))  # composable replicate builds DDP lazily
    assert seen and all(kw.get("gradient_as_bucket_view") is True for kw in seen)


@pytest.mark.parametrize(
    ("dtype", "param", "reduce"),
    [
        (torch.bfloat16, torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16, torch.float32),
        (None, None, None),
        (torch.float32, None, None),
    ],
)
def test_fsdp2_gathers_and_reduces_in_the_autocast_dtype(
    one_rank_group: None, dtype: torch.dtype | None, param: object, reduce: object
) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    model = parallelize(_model(), TrainConfig(fsdp=True), PARALLEL, param_dtype=dtype)
    for module in [*model.blocks, model]:  # type: ignore[attr-defined]
        policy = module._get_fsdp_state()._mp_policy
        assert isinstance(policy, MixedPrecisionPolicy)
        assert (policy.param_dtype, policy.reduce_dtype) == (param, reduce)
