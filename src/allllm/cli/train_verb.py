"""The ``train`` verb: options in, :func:`allllm.train.session.train` out."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from allllm.cli.app import (
    ConfigOpt,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    app,
    make_console,
    print_json,
)

# train ----------------------------------------------------------------------------------------


@app.command("train")
def train_cmd(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    only_new: Annotated[
        bool,
        typer.Option("--only-new", "--only_new", help="Train only shards this model has not seen."),
    ] = False,
    shards: Annotated[
        str | None, typer.Option("--shards", help="Glob of shard names to choose from.")
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", min=1, help="Stop after this many steps (run stays pending)."),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens", min=1, help="Stop after this many tokens (run stays pending)."
        ),
    ] = None,
    max_time: Annotated[
        str | None,
        typer.Option("--max-time", help="Stop after this long: 3600, 90m, 1h30m, HH:MM:SS."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the plan with time and memory estimates; train nothing."
        ),
    ] = False,
    reset_optimizer: Annotated[
        bool, typer.Option("--reset-optimizer", help="Start with fresh optimizer moments.")
    ] = False,
    abandon_pending: Annotated[
        bool,
        typer.Option("--abandon-pending", help="Drop an unfinished run (its shards stay new)."),
    ] = False,
    from_checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--from-checkpoint", help="Start from this checkpoint directory (step-NNNNNNNN)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:N or mps (default: auto).")
    ] = None,
    trust_unverified: Annotated[
        bool, typer.Option("--trust-unverified", help="Validate and use shards without meta.")
    ] = False,
    start_fresh: Annotated[
        bool,
        typer.Option(
            "--start-fresh",
            help="When checkpoints exist but none is usable: move them and their seen records "
            "aside and train from fresh weights.",
        ),
    ] = False,
    device_memory: Annotated[
        str | None,
        typer.Option(
            "--device-memory",
            help="With --dry-run: plan memory for a device of this size (80GiB, 80GB, 141G) "
            "or a known GPU (H100, H200, A100-80GB, L4, ...), present or not.",
        ),
    ] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train on the shards this model has not seen, resuming from the latest checkpoint.

    Example: allllm train --model tiny --only-new --max-time 10m
    """
    from allllm.config import load_config, parse_duration
    from allllm.errors import ConfigError
    from allllm.train.memory_plan import parse_device_memory
    from allllm.train.options import TrainOptions

    if device_memory is not None and not dry_run:
        raise ConfigError(
            "--device-memory plans memory for a dry run only", "add --dry-run, or drop it"
        )
    memory = parse_device_memory(device_memory) if device_memory is not None else None
    cfg = load_config(model, config)
    seconds = None
    if max_time is not None:
        try:
            seconds = parse_duration(max_time)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--max-time") from None
    options = TrainOptions(
        only_new=only_new,
        shards=shards,
        max_steps=max_steps,
        max_tokens=max_tokens,
        max_time=seconds,
        dry_run=dry_run,
        reset_optimizer=reset_optimizer,
        abandon_pending=abandon_pending,
        from_checkpoint=from_checkpoint,
        device=device,
        trust_unverified=trust_unverified,
        start_fresh=start_fresh,
        device_memory=memory,
    )
    from allllm.cli.views.train import RichTrainReporter, render_dry_run
    from allllm.train.distributed import env_dist_info
    from allllm.train.session import train

    main_rank = env_dist_info().is_main
    reporter = RichTrainReporter(
        make_console(stderr=as_json), make_console(stderr=True), quiet=quiet, main=main_rank
    )
    try:
        result = train(cfg, options, reporter)
    finally:
        reporter.close()
    if as_json and main_rank:
        print_json(dataclasses.asdict(result))
    elif dry_run and main_rank and result.plan is not None:
        render_dry_run(result.plan, make_console())
    if result.exit_code:
        raise typer.Exit(result.exit_code)
