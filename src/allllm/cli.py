"""The ``allllm`` command line: Typer verbs that parse options, call the library, print.

Nothing here holds logic a Python caller would miss: every verb is a thin
wrapper over a library function. Heavy modules (torch, transformers, the
tokenizer backends) are imported inside the verbs so ``allllm --help`` stays
fast. :func:`main` owns error handling: user errors are one line on stderr and
exit 1, usage errors exit 2, Ctrl-C exits 130, tracebacks only with
``--debug`` / ``ALLLLM_DEBUG=1``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from allllm import __version__
from allllm.errors import AllllmError

if TYPE_CHECKING:
    from allllm.config import Config

# Options shared by the verbs -----------------------------------------------------------------

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Config name: ./configs/NAME.json, else the preset NAME."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Path of a config file (instead of --model).", dir_okay=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]

_state = {"debug": False}


def _debug_enabled() -> bool:
    return _state["debug"] or os.environ.get("ALLLLM_DEBUG", "") not in ("", "0", "false")


def _version_callback(value: bool) -> None:
    if value:
        print(f"allllm {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="allllm",
    help="Step-wise pre-training of decoder-only LLMs: tokenize new text, train only on what the "
    "model has not seen, resume from any crash.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(
    help="List, show and create configs.", no_args_is_help=True, add_completion=False
)
tokenizer_app = typer.Typer(help="Train a tokenizer on your raw text.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(tokenizer_app, name="tokenizer")


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Show the version and exit.",
            callback=_version_callback,
            is_eager=True,
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks on errors (or ALLLLM_DEBUG=1).")
    ] = False,
) -> None:
    """allllm — step-wise pre-training of decoder-only LLMs."""
    _state["debug"] = debug


def _console(stderr: bool = False):  # -> rich.console.Console
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _warn_line(console: object, message: str) -> None:
    """A yellow "warning:" line; the message is printed literally (no rich markup)."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)  # type: ignore[attr-defined]


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# config ---------------------------------------------------------------------------------------


@config_app.command("list")
def config_list(as_json: JsonOpt = False) -> None:
    """List local configs (./configs) and packaged presets.

    Example: allllm config list
    """
    from allllm.config import count_parameters, format_count, iter_known_configs

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
        _print_json(rows)
        return
    from rich.table import Table

    table = Table(title="configs", title_justify="left")
    for col in ("name", "source", "arch", "params", "seq_len", "tokenizer"):
        table.add_column(col, justify="right" if col in ("params", "seq_len") else "left")
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], r["source"], "[red]invalid[/red]", "", "", r["error"])
        else:
            table.add_row(
                r["name"],
                r["source"],
                r["arch"],
                format_count(r["parameters"]),
                str(r["seq_len"]),
                r["tokenizer"],
            )
    _console().print(table)


@config_app.command("show")
def config_show(model: ModelOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the resolved, validated config and its parameter count.

    Example: allllm config show --model phi-2
    """
    from allllm.config import count_parameters, find_config, format_count

    source = find_config(model, config)
    cfg = source.load()
    n_params = count_parameters(cfg.model)
    if as_json:
        _print_json(
            {"source": source.describe(), "parameters": n_params, "config": cfg.to_json_dict()}
        )
        return
    console = _console()
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
    _console().print(
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
    from allllm.tokenizer.training import train_tokenizer_from_config

    if kind is not None and kind not in ("bpe", "sentencepiece"):
        raise typer.BadParameter("must be 'bpe' or 'sentencepiece'", param_hint="--kind")
    cfg = load_config(model, config)
    result = train_tokenizer_from_config(
        cfg, vocab_size=vocab_size, kind=kind, force=force, show_progress=not quiet
    )
    if not quiet:
        _console().print(
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
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Tokenize raw text into cached shards in data.dir (only what is new or changed).

    Example: allllm tokenize --model tiny --input data/raw
    """
    from allllm.config import load_config
    from allllm.data.tokenize import tokenize

    cfg = load_config(model, config)
    console = _console()
    err_console = _console(stderr=True)
    show = not (quiet or as_json)
    progress = None
    if show and err_console.is_terminal:  # no bar in logs and pipes: the summary says it all
        from allllm.tokenize_view import RichTokenizeProgress

        progress = RichTokenizeProgress(err_console)

    def warn(message: str) -> None:
        if not quiet:
            _warn_line(err_console, message)

    summary = tokenize(
        cfg,
        inputs=input_ or None,
        force=force,
        extra_formats=["bin"] if bin_ else None,
        progress=progress,
        warn=warn,
        num_threads=threads,
    )
    if as_json:
        _print_json(summary.to_dict())
    elif show:
        from allllm.tokenize_view import render_summary

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
    as_json: JsonOpt = False,
) -> None:
    """List the shards of data.dir: new, seen (at which step), invalid (why), ...

    Example: allllm status --model tiny --json
    """
    from allllm.config import load_config
    from allllm.status import build_status

    cfg = load_config(model, config)
    report = build_status(
        cfg, verify=verify, trust_unverified=trust_unverified, checkpoint=_checkpoint_summary(cfg)
    )
    if as_json:
        _print_json(report)
        return
    from allllm.status_view import render_status

    render_status(report, _console())


def _checkpoint_summary(cfg: Config) -> dict | None:
    """The latest checkpoint for `status` (None until `allllm train` has saved one)."""
    from allllm.train.checkpoint import checkpoint_summary

    notes: list[str] = []
    summary = checkpoint_summary(cfg.checkpoint_path, warn=notes.append)
    for note in notes:
        _warn_line(_console(stderr=True), note)
    return summary


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
            "--from-checkpoint", help="Start from this checkpoint directory (step-XXXXXXXX)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:N or mps (default: auto).")
    ] = None,
    trust_unverified: Annotated[
        bool, typer.Option("--trust-unverified", help="Validate and use shards without meta.")
    ] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train on the shards this model has not seen, resuming from the latest checkpoint.

    Example: allllm train --model tiny --only-new --max-time 10m
    """
    from allllm.config import load_config, parse_duration
    from allllm.train.session import TrainOptions

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
    )
    from allllm.train.distributed import env_dist_info
    from allllm.train.trainer import train
    from allllm.train_view import RichTrainReporter, render_dry_run

    main_rank = env_dist_info().is_main
    reporter = RichTrainReporter(
        _console(stderr=as_json), _console(stderr=True), quiet=quiet, main=main_rank
    )
    try:
        result = train(cfg, options, reporter)
    finally:
        reporter.close()
    if as_json and main_rank:
        _print_json(dataclasses.asdict(result))
    elif dry_run and main_rank and result.plan is not None:
        render_dry_run(result.plan, _console())
    if result.exit_code:
        raise typer.Exit(result.exit_code)


# generate / eval / export / plot / demo: use what was trained ---------------------------------

StepOpt = Annotated[
    int | None,
    typer.Option("--step", min=0, help="Checkpoint step to use (default: the latest)."),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda, cuda:N or mps (default: auto).")
]


def _warn_to_stderr(message: str) -> None:
    _warn_line(_console(stderr=True), message)


@app.command("generate")
def generate_cmd(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Text to continue (empty: a new document).")
    ] = None,
    prompt_file: Annotated[
        Path | None,
        typer.Option("--prompt-file", dir_okay=False, help="Read the prompt from this file."),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", min=1, help="Tokens to generate at most.")
    ] = 200,
    temperature: Annotated[
        float,
        typer.Option("--temperature", "-t", min=0.0, help="0 = greedy; higher = more random."),
    ] = 0.8,
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=1, help="Sample among the k likeliest tokens.")
    ] = None,
    top_p: Annotated[
        float,
        typer.Option(
            "--top-p", min=0.0, max=1.0, help="Sample among the likeliest tokens of this mass."
        ),
    ] = 0.95,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="Seed for sampling (default: random).")
    ] = None,
    step: StepOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Continue a prompt with the trained model, streaming the text as it is produced.

    Stops at the end-of-text token or after --max-new-tokens.
    Example: allllm generate --model tiny --prompt "Return the" --max-new-tokens 100 --seed 1
    """
    from allllm.config import load_config
    from allllm.generate_text import SamplingSettings, generate_text
    from allllm.inference import load_trained

    if prompt is not None and prompt_file is not None:
        raise typer.BadParameter("give --prompt or --prompt-file, not both", param_hint="--prompt")
    if top_p <= 0:
        raise typer.BadParameter("must be above 0", param_hint="--top-p")
    text = prompt or ""
    if prompt_file is not None:
        try:
            text = prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"cannot read {prompt_file}: {exc}", "--prompt-file") from None
    cfg = load_config(model, config)
    trained = load_trained(cfg, step, device=device, warn=_warn_to_stderr)
    settings = SamplingSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if not as_json:
        stream(text)
    result = generate_text(trained, text, settings, on_text=None if as_json else stream)
    if as_json:
        _print_json(result.to_dict())
        return
    sys.stdout.write("\n")
    parts = [
        f"step {result.step}",
        f"{result.new_tokens} tokens",
        f"{result.tokens_per_s:.0f} tok/s",
        f"seed {result.seed}",
    ]
    if result.stopped_at_eos:
        parts.append("end of text")
    if result.prompt_truncated:
        parts.append(f"prompt cut to its last {result.prompt_tokens} tokens")
    _console(stderr=True).print(f"[dim]({' · '.join(parts)})[/dim]")


@app.command("eval")
def eval_cmd(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    shards: Annotated[
        str | None,
        typer.Option(
            "--shards",
            help="Glob of shard names: evaluate all their rows (default: held-out rows).",
        ),
    ] = None,
    step: StepOpt = None,
    device: DeviceOpt = None,
    trust_unverified: Annotated[
        bool, typer.Option("--trust-unverified", help="Validate and use shards without meta.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Loss and perplexity of the trained model on rows it never trained on.

    Default: the validation rows of every shard the checkpoint has seen, plus data.eval_shards.
    Example: allllm eval --model tiny --json
    """
    from allllm.config import load_config
    from allllm.eval_view import RichEvalProgress, render_eval
    from allllm.evaluation import evaluate_model
    from allllm.inference import load_trained

    cfg = load_config(model, config)
    trained = load_trained(cfg, step, device=device, warn=_warn_to_stderr)
    result = evaluate_model(
        trained,
        shards=shards,
        progress=RichEvalProgress(_console(stderr=True)),
        warn=_warn_to_stderr,
        trust_unverified=trust_unverified,
    )
    if as_json:
        _print_json(result.to_dict())
    else:
        render_eval(result, _console())


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (new or empty).")],
    model: ModelOpt = None,
    config: ConfigOpt = None,
    step: StepOpt = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weight format: fp32, bf16 or fp16.")
    ] = "fp32",
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty folder, replacing our files.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a checkpoint as a Hugging Face folder (model, generation config, tokenizer).

    transformers' AutoModelForCausalLM / AutoTokenizer .from_pretrained(DIR) load it.
    Example: allllm export --model tiny --out exported/tiny
    """
    from allllm.config import load_config
    from allllm.export import DTYPES, export_model

    if dtype not in DTYPES:
        raise typer.BadParameter(f"must be one of {', '.join(DTYPES)}", param_hint="--dtype")
    cfg = load_config(model, config)
    result = export_model(cfg, out, step=step, dtype=dtype, force=force, warn=_warn_to_stderr)
    if as_json:
        _print_json(result.to_dict())
        return
    console = _console()
    console.print(
        f"wrote {result.path}: {result.architecture} ({result.dtype}) of step {result.step}, "
        f"{len(result.files)} files ({', '.join(result.files)})",
        soft_wrap=True,
    )
    if result.note:
        _warn_to_stderr(result.note)


@app.command("plot")
def plot_cmd(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("loss.png"),
) -> None:
    """Plot training and validation loss against tokens seen, one band per run (needs matplotlib).

    Example: allllm plot --model tiny --out loss.png
    """
    from allllm.config import load_config
    from allllm.plot import plot_losses

    cfg = load_config(model, config)
    path, curves = plot_losses(cfg.checkpoint_path, out, name=cfg.name or "model")
    _console().print(
        f"wrote {path}: {len(curves.loss)} steps, {len(curves.val_loss)} validation points, "
        f"{len(curves.runs)} run(s)"
    )


@app.command("demo")
def demo_cmd(
    directory: Annotated[
        Path, typer.Argument(help="Workspace to create (rerunning in it starts over).")
    ] = Path("allllm-demo"),
) -> None:
    """The whole step-wise workflow on a tiny model in a few minutes: start here.

    Makes DIR with the tiny preset and Python's own docstrings as text, runs tokenize, train --only-new, status and generate, then adds text and trains only on it.
    Example: allllm demo
    """
    from allllm.demo import run_demo
    from allllm.demo_view import RichDemoUI

    console = _console()
    result = run_demo(directory, ui=RichDemoUI(console, _console(stderr=True)))
    console.print()
    console.rule("[bold]done[/bold]", align="left")
    console.print(
        f"The demo took {result.seconds:.0f}s. Try it yourself:\n"
        f"  cd {directory}\n"
        '  allllm generate --model tiny --prompt "Return the" --temperature 0.7\n'
        "  allllm export --model tiny --out exported-tiny     # a Hugging Face folder\n"
        "  allllm config init mine --from tiny                # your own model; text in data/raw/",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )


# entry point ----------------------------------------------------------------------------------


def _print_error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _is_usage_error(exc: BaseException) -> bool:
    """Click/Typer usage errors (bad option, missing argument, ...) across Typer versions."""
    return (
        not isinstance(exc, AllllmError)
        and hasattr(exc, "show")
        and isinstance(getattr(exc, "exit_code", None), int)
    )


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exits with DESIGN.md §9's codes."""
    args = sys.argv[1:] if argv is None else argv
    if "--debug" in args:
        _state["debug"] = True
    try:
        code = app(args=args, prog_name="allllm", standalone_mode=False)
        if isinstance(code, int) and code:  # click returns typer.Exit's code in this mode
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except typer.Abort:
        _print_error("interrupted")
        sys.exit(130)
    except AllllmError as exc:
        if _debug_enabled():
            import traceback

            traceback.print_exc()
        _print_error(exc.one_line())
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _print_error("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        # `allllm status --json | head`: the reader went away; that is not an error.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        sys.exit(0)
    except OSError as exc:
        if _debug_enabled():
            raise
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        _print_error(f"{exc.strerror or exc}{where} — check the path and its permissions")
        sys.exit(1)
    except SystemExit:
        raise
    except Exception as exc:
        if _is_usage_error(exc):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if _debug_enabled():
            raise
        _print_error(
            f"internal error: {type(exc).__name__}: {exc} — this is a bug in allllm; rerun with "
            "--debug for the traceback and report it"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
