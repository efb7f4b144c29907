"""The ``allllm`` command line: Typer verbs that parse options, call the library, print.

Nothing here holds logic a Python caller would miss: every verb is a thin
wrapper over a library function. Heavy modules (torch, transformers, the
tokenizer backends) are imported inside the verbs so ``allllm --help`` stays
fast. :func:`main` owns error handling: user errors are one line on stderr and
exit 1, usage errors exit 2, Ctrl-C exits 130, tracebacks only with
``--debug`` / ``ALLLLM_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

import typer

from allllm.cli import data_verbs, train_verb, use_verbs  # noqa: F401 - registers the verbs
from allllm.cli.app import app, debug_enabled, state
from allllm.errors import AllllmError

__all__ = ["app", "main", "run_seed_command"]


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
    """Run the CLI; exits with the codes of docs/design.md, exit codes."""
    import allllm.util.atomic  # noqa: F401 - reads the umask once, before any thread starts

    try:
        _main(argv)
        code: int = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            _print_error(exc.code)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_rank(code)
    if code:
        sys.exit(code)


def seed_option_spelling(args: list[str]) -> list[str]:
    """``--only_new`` → ``--only-new``: the seed's scripts spelled options with underscores.

    Only option names change (``--max_steps=5`` → ``--max-steps=5``); values never do.
    """
    out = []
    for arg in args:
        if arg == "--":
            out.extend(args[len(out) :])
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def run_seed_command(verb: str, args: list[str]) -> None:
    """``python train.py ...`` / ``python scripts/tokenize_dataset.py ...``: the verb itself."""
    main([verb, *seed_option_spelling(args)])


def _leave_rank(code: int) -> None:
    """End a torchrun rank without interpreter finalization.

    Everything this process wrote is durable by now (checkpoints are fsynced before
    the run returns). What finalization would still do is tear down gloo's worker
    threads and the tensors they hold in an arbitrary order, which aborts a rank now
    and then ("terminate called without an active exception", SIGABRT) and turns a
    finished run into a failed job. So flush what the user should see and leave.
    """
    import logging

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


def _main(argv: list[str] | None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if "--debug" in args:
        state["debug"] = True
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
        if debug_enabled():
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
        if debug_enabled():
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
        if debug_enabled():
            raise
        _print_error(
            f"internal error: {type(exc).__name__}: {exc} — this is a bug in allllm; rerun with "
            "--debug for the traceback and report it"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
