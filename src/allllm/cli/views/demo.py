"""Terminal display of ``allllm demo``: each step's sentence and command, then what the verb shows.

The demo reports through :class:`allllm.demo.run.DemoUI`; this implementation reuses the
verbs' own views (tokenize, train, status, eval), so the demo looks like the
commands it explains.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from allllm.data.tokenize.summary import TokenizeProgress, TokenizeSummary
    from allllm.train.options import Reporter
    from allllm.use.evaluate import EvalProgress
    from allllm.use.generate import GenerationResult


class RichDemoUI:
    """Steps as headed paragraphs, commands as ``$ ...`` lines, generated text streamed."""

    def __init__(self, console: Console, err_console: Console) -> None:
        self.console = console
        self.err_console = err_console

    def step(self, title: str, command: str | None, explanation: str) -> None:
        self.console.print()
        self.console.rule(f"[bold]{escape(title)}[/bold]", align="left")
        self.console.print(escape(explanation), soft_wrap=False)
        if command:
            self.console.print(f"[dim]$ {escape(command)}[/dim]", soft_wrap=True)

    def say(self, text: str) -> None:
        self.console.print(escape(text))

    def warn(self, text: str) -> None:
        self.err_console.print(f"[yellow]warning:[/yellow] {escape(text)}", soft_wrap=True)

    def tokenize_progress(self) -> TokenizeProgress | None:
        from allllm.cli.views.tokenize import RichTokenizeProgress

        return RichTokenizeProgress(self.console)

    def tokenized(self, summary: TokenizeSummary) -> None:
        from allllm.cli.views.tokenize import render_summary

        render_summary(summary, self.console)

    def train_reporter(self) -> Reporter:
        from allllm.cli.views.train import RichTrainReporter

        return RichTrainReporter(self.console, self.err_console)

    def status(self, report: dict[str, Any]) -> None:
        from allllm.cli.views.status import render_status

        render_status(report, self.console)

    def generation_started(self, prompt: str) -> None:
        self.console.print(f"[bold]{escape(prompt)}[/bold]", end="")

    def text(self, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    def generation_finished(self, result: GenerationResult) -> None:
        end = "<end of text>" if result.stopped_at_eos else ""
        self.console.print(f"[dim]{end}[/dim]")
        self.console.print(
            f"[dim]{result.new_tokens} tokens in {result.seconds:.1f}s "
            f"({result.tokens_per_s:.0f} tokens/s, step {result.step}, seed {result.seed})[/dim]"
        )

    def eval_progress(self) -> EvalProgress | None:
        from allllm.cli.views.eval import RichEvalProgress

        return RichEvalProgress(self.err_console)
