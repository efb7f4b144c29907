"""Verbs that use what was trained: ``generate``, ``eval``, ``export``, ``plot``, ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from allllm.cli.app import (
    ConfigOpt,
    JsonOpt,
    ModelOpt,
    app,
    make_console,
    print_json,
    warn_line,
)
from allllm.errors import DataError

# generate / eval / export / plot / demo: use what was trained ---------------------------------

StepOpt = Annotated[
    int | None,
    typer.Option("--step", min=0, help="Checkpoint step to use (default: the latest)."),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda, cuda:N or mps (default: auto).")
]


def _warn_to_stderr(message: str) -> None:
    warn_line(make_console(stderr=True), message)


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
    from allllm.use.generate import SamplingSettings, generate_text
    from allllm.use.trained import load_trained

    if prompt is not None and prompt_file is not None:
        raise typer.BadParameter("give --prompt or --prompt-file, not both", param_hint="--prompt")
    if top_p <= 0:
        raise typer.BadParameter("must be above 0", param_hint="--top-p")
    text = prompt or ""
    if prompt_file is not None:
        try:
            text = prompt_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(
                f"--prompt-file {prompt_file}: {exc.strerror or exc}",
                "check the path and its permissions",
            ) from None
        except UnicodeDecodeError as exc:
            raise DataError(
                f"--prompt-file {prompt_file}: not UTF-8 text (byte {exc.start})",
                "save the prompt as UTF-8",
            ) from None
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
        print_json(result.to_dict())
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
    make_console(stderr=True).print(f"[dim]({' · '.join(parts)})[/dim]")


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
    by_run: Annotated[
        bool,
        typer.Option(
            "--by-run",
            help="The forgetting matrix's row: loss on each completed run's frozen subset.",
        ),
    ] = False,
    all_checkpoints: Annotated[
        bool,
        typer.Option(
            "--all-checkpoints",
            help="With --by-run: fill in the row of every kept checkpoint that has none.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Loss and perplexity of the trained model on rows it never trained on.

    Default: the validation rows of every shard the checkpoint has seen, plus data.eval_shards.
    --by-run: the forgetting matrix (model after run j x held-out text of run i).
    Example: allllm eval --model tiny --json
    """
    from allllm.cli.views.eval import RichEvalProgress, render_eval
    from allllm.config import load_config
    from allllm.use.evaluate import evaluate_model
    from allllm.use.trained import load_trained

    if all_checkpoints and not by_run:
        raise typer.BadParameter("needs --by-run", param_hint="--all-checkpoints")
    if by_run and shards is not None:
        raise typer.BadParameter("--by-run evaluates the frozen subsets", param_hint="--shards")
    if all_checkpoints and step is not None:
        raise typer.BadParameter("evaluates every checkpoint", param_hint="--step")
    cfg = load_config(model, config)
    if by_run:
        _eval_by_run(cfg, step, all_checkpoints, device, trust_unverified, as_json)
        return
    trained = load_trained(cfg, step, device=device, warn=_warn_to_stderr)
    result = evaluate_model(
        trained,
        shards=shards,
        progress=RichEvalProgress(make_console(stderr=True)),
        warn=_warn_to_stderr,
        trust_unverified=trust_unverified,
    )
    if as_json:
        print_json(result.to_dict())
    else:
        render_eval(result, make_console())


def _eval_by_run(
    cfg: Any, step: int | None, all_checkpoints: bool, device: str | None, trust: bool, js: bool
) -> None:
    from allllm.cli.views.eval import RichEvalProgress, render_matrix
    from allllm.use.forgetting_eval import evaluate_by_run

    result = evaluate_by_run(
        cfg,
        step,
        all_checkpoints=all_checkpoints,
        device=device,
        progress=RichEvalProgress(make_console(stderr=True)),
        warn=_warn_to_stderr,
        trust_unverified=trust,
    )
    if js:
        print_json(result.to_dict())
    else:
        render_matrix(result.matrix, make_console(), evaluated=result.appended)


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
    from allllm.use.export import DTYPES, export_model

    if dtype not in DTYPES:
        raise typer.BadParameter(f"must be one of {', '.join(DTYPES)}", param_hint="--dtype")
    cfg = load_config(model, config)
    result = export_model(cfg, out, step=step, dtype=dtype, force=force, warn=_warn_to_stderr)
    if as_json:
        print_json(result.to_dict())
        return
    console = make_console()
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
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="PNG file to write (loss.png, forgetting.png)."),
    ] = None,
    forgetting: Annotated[
        bool,
        typer.Option(
            "--forgetting", help="Draw the forgetting matrix (heatmap and per-run curves)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Plot training and validation loss against tokens seen, one band per run (needs matplotlib).

    --forgetting draws the matrix of evals.jsonl instead.
    Example: allllm plot --model tiny --out loss.png
    """
    from allllm.config import load_config

    cfg = load_config(model, config)
    name = cfg.name or "model"
    if forgetting:
        from allllm.use.forgetting_plot import plot_forgetting

        path, matrix = plot_forgetting(
            cfg.checkpoint_path, out or Path("forgetting.png"), name=name
        )
        if as_json:
            print_json({"path": str(path), "matrix": matrix.to_dict()})
            return
        make_console().print(
            f"wrote {path}: forgetting matrix of {len(matrix.rows)} row(s) × "
            f"{len([r for r in matrix.runs if r.rows])} run(s)"
        )
        return
    from allllm.use.plot import plot_losses

    path, curves = plot_losses(cfg.checkpoint_path, out or Path("loss.png"), name=name)
    if as_json:
        print_json(
            {"path": str(path), "steps": len(curves.loss), "val_points": len(curves.val_loss),
             "runs": len(curves.runs)}
        )  # fmt: skip
        return
    make_console().print(
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
    from allllm.cli.views.demo import RichDemoUI
    from allllm.demo.run import run_demo

    console = make_console()
    result = run_demo(directory, ui=RichDemoUI(console, make_console(stderr=True)))
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
