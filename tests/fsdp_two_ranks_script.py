"""Run by test_fsdp_mechanisms.py under torchrun (2 gloo ranks): FSDP2 mechanisms a CPU can
show. Each rank writes ``rank<R>.json`` into ``argv[1]``; the test reads them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from allllm.config import TrainConfig
from allllm.model import Transformer
from allllm.train import checkpoint as ckpt_io
from allllm.train.distributed import DistInfo
from allllm.train.model_setup import restore_optimizer
from allllm.train.parallelize import gradient_sync, parallelize
from allllm.train.sharded_checkpoint import save_tensors
from allllm.train.start import StartPoint
from allllm.train.state import TrainState
from allllm.train.state_dicts import optimizer_state
from model_helpers import CONFIGS, tiny_config

OUT = Path(sys.argv[1])
REDUCERS = [n for n in ("reduce_scatter_single", "reduce_scatter_tensor") if hasattr(dist, n)]
counts = {"reduce": 0, "optimizer_file_reads": 0, "torch_load": 0}


def _count(name: str) -> None:
    real = getattr(dist, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        counts["reduce"] += 1
        return real(*args, **kwargs)

    setattr(dist, name, counting)


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_config(**CONFIGS["llama-gqa"]))


def _step(model: torch.nn.Module, micro: int) -> None:
    gen = torch.Generator().manual_seed(dist.get_rank())
    for i in range(micro):
        with gradient_sync(model, sync=i == micro - 1):
            loss_sum, count = model(torch.randint(0, 101, (2, 12), generator=gen))
            (loss_sum / count).backward()


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    info = DistInfo(rank=rank, world_size=dist.get_world_size())
    report: dict[str, Any] = {}
    for name in REDUCERS:
        _count(name)
    for micro in (1, 4):  # reduce-scatters of one optimizer step's gradients
        model = parallelize(_model(), TrainConfig(fsdp=True), info)
        counts["reduce"] = 0
        _step(model, micro)
        report[f"reduces_{micro}_micro"] = counts["reduce"]

    # a single-file checkpoint of one process's optimizer state, resumed under FSDP
    plain = _model()
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-3)
    _step(plain, 1)
    opt.step()
    full = optimizer_state(plain, opt)
    ckpt = OUT / "ckpt"
    if rank == 0:
        ckpt_io.save_checkpoint(
            ckpt, 1, model_state=plain.state_dict(), optimizer_state=full,
            train_state=TrainState(step=1),
        )  # fmt: skip
    dist.barrier()
    real_read, real_load = ckpt_io.load_optimizer_state, torch.load

    def reading(ref: Any) -> Any:
        counts["optimizer_file_reads"] += 1
        return real_read(ref)

    def loading(*args: Any, **kwargs: Any) -> Any:
        counts["torch_load"] += 1
        return real_load(*args, **kwargs)

    ckpt_io.load_optimizer_state, torch.load = reading, loading  # type: ignore[assignment]
    step_dir = ckpt / ckpt_io.step_dir_name(1)
    start = StartPoint(step_dir, TrainState(step=1), None, {}, None)
    model = parallelize(_model(), TrainConfig(fsdp=True), info)
    sharded_opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restore_optimizer(model, sharded_opt, start, info)
    report["single_file_reads"] = counts["optimizer_file_reads"]
    back = optimizer_state(model, sharded_opt)  # gathered on rank 0
    if rank == 0:
        report["single_file_equal"] = all(
            torch.equal(back["state"][n][k], full["state"][n][k])
            for n in full["state"]
            for k in full["state"][n]
        )

    # the same state as shards, resumed: no rank reads a whole file or unpickles anything
    tmp = OUT / "sharded"
    layout = save_tensors(tmp, model, sharded_opt)
    counts["optimizer_file_reads"] = counts["torch_load"] = 0
    state = TrainState(step=1, layout={"kind": "sharded", **layout})
    again = parallelize(_model(), TrainConfig(fsdp=True), info)
    again_opt = torch.optim.AdamW(again.parameters(), lr=1e-3)
    restore_optimizer(again, again_opt, StartPoint(tmp, state, None, {}, None), info)
    report["sharded_reads"] = counts["optimizer_file_reads"] + counts["torch_load"]
    back = optimizer_state(again, again_opt)
    if rank == 0:
        report["sharded_equal"] = all(
            torch.equal(back["state"][n][k], full["state"][n][k])
            for n in full["state"]
            for k in full["state"][n]
        )
    (OUT / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
