"""Verbs about configs and data: ``config``, ``tokenizer train``, ``tokenize``, ``status``."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from allllm.cli.app import (
    ConfigOpt,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    app,
    config_app,
    make_console,
    print_json,
    tokenizer_app,
    warn_line,
)

if TYPE_CHECKING:
    from allllm.config import Config

# config ---------------------------------------------------------------------------------------


@config_app.command("list")
def config_list(as_json: JsonOpt = False) -> None:
    """List local configs (./configs) and packaged presets.

    Example: allllm config list
    """
    from allllm.config import iter_known_configs
    from allllm.model.sizes import count_parameters

    rows = []
    for source in iter_known_configs():
        try:
            cfg = source.load()
        except Exception as exc:  # a broken local config is listed, not fatal
            rows.append({"name": source.name, "source": source.describe(), "error": str(exc)})
            continue
        rows.append(
            {
                "name": source.name,
                "source": source.kind,
                "arch": cfg.model.arch,
                "parameters": count_parameters(cfg.model),
                "seq_len": cfg.data.seq_len,
                "tokenizer": f"{cfg.tokenizer.backend}"
                + (f":{cfg.tokenizer.path}" if cfg.tokenizer.path else ""),
            }
        )
    if as_json:
        print_json(rows)
        return
    from allllm.cli.views.config import render_config_list

    render_config_list(rows, make_console())


@config_app.command("show")
def config_show(model: ModelOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the resolved, validated config and its parameter count.

    Example: allllm config show --model phi-2
    """
    from allllm.config import find_config
    from allllm.model.sizes import count_parameters, format_count

    source = find_config(model, config)
    cfg = source.load()
    n_params = count_parameters(cfg.model)
    if as_json:
        print_json(
            {"source": source.describe(), "parameters": n_params, "config": cfg.to_json_dict()}
        )
        return
    console = make_console()
    console.print(f"[bold]{cfg.name}[/bold]  ({source.describe()})", markup=True, highlight=False)
    console.print(
        f"parameters: [bold]{format_count(n_params)}[/bold] ({n_params:,})  arch: {cfg.model.arch}"
        f"  seq_len: {cfg.data.seq_len}  checkpoints: {cfg.checkpoint_path}"
    )
    console.print_json(json.dumps(cfg.to_json_dict()))


@config_app.command("init")
def config_init(
    new: Annotated[str, typer.Argument(help="Name of the new config (configs/NEW.json).")],
    from_: Annotated[str, typer.Option("--from", help="Preset or local config to copy.")] = "tiny",
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing configs/NEW.json.")
    ] = False,
) -> None:
    """Create configs/NEW.json from a preset, with its own name and checkpoint dir.

    Example: allllm config init my-phi --from phi-2
    """
    from allllm.config import init_config

    path = init_config(new, from_, force=force)
    make_console().print(
        f"wrote {path} (from {from_}); edit it, then: allllm config show --model {new}"
    )


# tokenizer ------------------------------------------------------------------------------------


@tokenizer_app.command("train")
def tokenizer_train(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    vocab_size: Annotated[
        int | None,
        typer.Option("--vocab-size", min=16, help="Vocabulary size (default: model.vocab_size)."),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="bpe (HF byte-level BPE) or sentencepiece (default: from tokenizer.backend).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing tokenizer file.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a tokenizer on the config's raw text and write it to tokenizer.path.

    Example: allllm tokenizer train --model my-model --vocab-size 32000 --kind bpe
    """
    from allllm.config import load_config
    from allllm.use.tokenizer_training import train_tokenizer_from_config

    if kind is not None and kind not in ("bpe", "sentencepiece"):
        raise typer.BadParameter("must be 'bpe' or 'sentencepiece'", param_hint="--kind")
    cfg = load_config(model, config)
    result = train_tokenizer_from_config(
        cfg, vocab_size=vocab_size, kind=kind, force=force, show_progress=not quiet
    )
    if not quiet:
        make_console().print(
            f"wrote {result.path} ({result.kind}, {result.vocab_size} ids, trained on "
            f"{result.documents} documents / {result.bytes_read / 1e6:.1f} MB)"
        )


# tokenize -------------------------------------------------------------------------------------


@app.command("tokenize")
def tokenize_cmd(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    input_: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="Raw file, folder or glob (repeatable); overrides data.raw_path."
        ),
    ] = None,
    bin_: Annotated[
        bool, typer.Option("--bin", help="Also write the memory-mapped .bin format.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Redo sources that are already up to date.")
    ] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Encoder threads (default: all cores).")
    ] = None,
    rank: Annotated[
        int | None,
        typer.Option(
            "--rank", min=0, help="This task's rank in a job array (torchrun and srun need none)."
        ),
    ] = None,
    world_size: Annotated[
        int | None,
        typer.Option("--world-size", min=1, help="How many tasks share the job (with --rank)."),
    ] = None,
    job_id: Annotated[
        str | None,
        typer.Option(
            "--job-id", help="The job the tasks share (default: TORCHELASTIC_RUN_ID, SLURM_JOB_ID)."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=1, help="Worker processes on this machine (they split its cores)."
        ),
    ] = 1,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Tokenize raw text into cached shards in data.dir (only what is new or changed).

    Example: allllm tokenize --model tiny --input data/raw
    Many processes: torchrun --nproc-per-node 8 -m allllm tokenize --model tiny
    """
    from allllm.config import load_config
    from allllm.data.tokenize.run import tokenize
    from allllm.data.tokenize.world import resolve_world
    from allllm.errors import ConfigError

    world = resolve_world(rank, world_size, job_id)
    if workers > 1 and not world.is_single:
        raise ConfigError(
            f"--workers {workers} with {world.launcher} ranks",
            "use one of them: more ranks (torchrun --nproc-per-node, srun) or --workers",
        )
    cfg = load_config(model, config)
    console = make_console()
    err_console = make_console(stderr=True)
    if world.simultaneous and world.rank != 0:
        quiet = True  # rank 0 speaks for the process group
    show = not (quiet or as_json)
    progress = None
    if show and err_console.is_terminal:  # no bar in logs and pipes: the summary says it all
        from allllm.cli.views.tokenize import RichTokenizeProgress

        progress = RichTokenizeProgress(err_console)

    def warn(message: str) -> None:
        if not quiet:
            warn_line(err_console, message)

    options: dict[str, Any] = {
        "inputs": input_ or None,
        "force": force,
        "extra_formats": ["bin"] if bin_ else None,
        "progress": progress,
        "warn": warn,
        "num_threads": threads,
    }
    if workers == 1 and (threads or world.local_size > 1):
        # ranks of one machine split its cores; HF tokenizers' Rust pool is sized by env
        from allllm.data.tokenize.local_workers import encoder_threads_env

        encoder_threads_env(threads or max(1, (os.cpu_count() or 1) // world.local_size))
    if workers > 1:
        from allllm.data.tokenize.local_workers import tokenize_with_workers

        summary = tokenize_with_workers(cfg, workers, **options)
    else:
        summary = tokenize(cfg, world=world, **options)
    if as_json and (world.rank == 0 or not world.simultaneous):
        print_json(summary.to_dict())
    elif show:
        from allllm.cli.views.tokenize import render_summary

        render_summary(summary, console)


# status ---------------------------------------------------------------------------------------


@app.command("status")
def status_cmd(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Also check every shard's sha256 digests.")
    ] = False,
    trust_unverified: Annotated[
        bool,
        typer.Option("--trust-unverified", help="Validate shards without meta by reading them."),
    ] = False,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            metavar="PATH",
            help="Which run and step trained the documents of this raw file, and which are "
            "not trained yet.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the shards of data.dir: new, seen (at which step), invalid (why), ...

    Example: allllm status --model tiny --json
    """
    from allllm.config import load_config
    from allllm.use.status import build_provenance, build_status

    cfg = load_config(model, config)
    if source is not None:
        found = build_provenance(cfg, source, checkpoint=_checkpoint_summary(cfg))
        if as_json:
            print_json(found)
            return
        from allllm.cli.views.status import render_provenance

        render_provenance(found, make_console())
        return
    report = build_status(
        cfg, verify=verify, trust_unverified=trust_unverified, checkpoint=_checkpoint_summary(cfg)
    )
    if as_json:
        print_json(report)
        return
    from allllm.cli.views.status import render_status

    render_status(report, make_console())


def _checkpoint_summary(cfg: Config) -> dict | None:
    """The latest checkpoint for `status` (None until `allllm train` has saved one)."""
    from allllm.train.checkpoint import checkpoint_summary

    notes: list[str] = []
    summary = checkpoint_summary(cfg.checkpoint_path, warn=notes.append)
    for note in notes:
        warn_line(make_console(stderr=True), note)
    return summary
