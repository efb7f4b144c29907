"""The Typer application, the options the verbs share, and small output helpers.

The verbs live in ``data_verbs``, ``train_verb`` and ``use_verbs``; they register
themselves on :data:`app` when ``allllm.cli`` imports them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from allllm import __version__

if TYPE_CHECKING:
    from rich.console import Console

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

state = {"debug": False}


def debug_enabled() -> bool:
    return state["debug"] or os.environ.get("ALLLLM_DEBUG", "") not in ("", "0", "false")


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
    state["debug"] = debug


def make_console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def warn_line(console: Console, message: str) -> None:
    """A yellow "warning:" line; the message is printed literally (no rich markup)."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
