"""``allllm demo [DIR]``: the whole step-wise workflow, end to end, in a few minutes on a CPU.

It makes a workspace (default ``./allllm-demo``) with the ``tiny`` preset as
``configs/tiny.json`` and a corpus of the running Python's own docstrings
(:mod:`allllm.demo.corpus`), then runs what a user runs, explaining each step:
tokenize → ``train --only-new`` → status → generate; then a second raw file
arrives, is tokenized, and ``train --only-new`` trains only its shard,
continuing from the first run's checkpoint; then eval and plot. Every step is
the library function behind the verb (``tokenize``, ``train``,
``build_status``, ``generate_text``, ``evaluate_model``, ``plot_losses``) —
the demo has no shortcuts of its own.

The two corpus parts are sized so that each run *completes* (a run bounded by
``--max-steps`` would stay pending and the second ``train`` would finish it
first, which is not the story shown here): about 215 + 70 steps of 8×256
tokens, under two minutes of training at the ~5.7k tokens/s the tiny model
trains on two idle CPU cores. Measured on such a machine: batches of 8 rows at
lr 3e-3 reach a lower loss per token than the preset's 16 rows at 2e-3 (2.37
vs 2.55 validation loss after 390k tokens), so the demo uses them.

The workspace (its marker, what a rerun removes, the demo's settings and
config) is :mod:`allllm.demo.workspace`; this module holds the steps.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from allllm.demo.workspace import (
    DEFAULT_DIR,
    MODEL,
    RAW_NAMES,
    DemoSettings,
    inside,
    prepare_workspace,
    write_demo_config,
)
from allllm.errors import AllllmError

if TYPE_CHECKING:
    from allllm.data.tokenize.summary import TokenizeProgress, TokenizeSummary
    from allllm.train.options import Reporter
    from allllm.use.evaluate import EvalProgress, EvalResult
    from allllm.use.generate import GenerationResult


@dataclass
class DemoResult:
    """What the demo did (tests check it; the CLI prints as it goes)."""

    directory: Path
    restarted: bool
    runs: list[dict[str, Any]] = field(default_factory=list)  # one summary per train run
    status: dict[str, Any] | None = None  # the final status report
    generations: list[GenerationResult] = field(default_factory=list)
    evaluation: EvalResult | None = None
    plot: Path | None = None
    seconds: float = 0.0


class DemoUI(Protocol):
    """How the demo talks (the CLI draws it with rich; tests record it)."""

    def step(self, title: str, command: str | None, explanation: str) -> None: ...
    def say(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def tokenize_progress(self) -> TokenizeProgress | None: ...
    def tokenized(self, summary: TokenizeSummary) -> None: ...
    def train_reporter(self) -> Reporter: ...
    def status(self, report: dict[str, Any]) -> None: ...
    def generation_started(self, prompt: str) -> None: ...
    def text(self, piece: str) -> None: ...
    def generation_finished(self, result: GenerationResult) -> None: ...
    def eval_progress(self) -> EvalProgress | None: ...


class QuietDemoUI:
    """Records what the demo says; prints nothing (library use, tests)."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.lines: list[str] = []
        self.warnings: list[str] = []

    def step(self, title: str, command: str | None, explanation: str) -> None:
        self.steps.append(title)
        self.lines.append(explanation)

    def say(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def tokenize_progress(self) -> TokenizeProgress | None:
        return None

    def tokenized(self, summary: TokenizeSummary) -> None:
        self.lines.append(f"tokenized {len(summary.shards)} shard(s)")

    def train_reporter(self) -> Reporter:
        from allllm.train.options import QuietReporter

        return QuietReporter()

    def status(self, report: dict[str, Any]) -> None:
        self.lines.append(f"status: {report['totals']['states']}")

    def generation_started(self, prompt: str) -> None:
        pass

    def text(self, piece: str) -> None:
        pass

    def generation_finished(self, result: GenerationResult) -> None:
        self.lines.append(result.prompt + result.text)

    def eval_progress(self) -> EvalProgress | None:
        return None


# -- the steps ------------------------------------------------------------------------------------


def _kb(n: int) -> str:
    return f"{n / 1000:.0f} KB"


class _Demo:
    def __init__(self, settings: DemoSettings, ui: DemoUI, result: DemoResult) -> None:
        self.settings, self.ui, self.result = settings, ui, result
        self.number = 0
        self.parts: list[str] = []  # the corpus: one text per raw file

    def step(self, title: str, command: str | None, explanation: str) -> None:
        self.number += 1
        self.ui.step(f"{self.number}. {title}", command, explanation)

    def tokenize(self) -> TokenizeSummary:
        from allllm.config import load_config
        from allllm.data.tokenize.run import tokenize

        summary = tokenize(
            load_config(MODEL), progress=self.ui.tokenize_progress(), warn=self.ui.warn
        )
        self.ui.tokenized(summary)
        return summary

    def train(self) -> dict[str, Any]:
        from allllm.config import load_config
        from allllm.train.options import TrainOptions
        from allllm.train.session import train

        reporter = self.ui.train_reporter()
        try:
            result = train(load_config(MODEL), TrainOptions(only_new=True), reporter)
        finally:
            close = getattr(reporter, "close", None)  # a live progress display stops here
            if close is not None:
                close()
        if result.exit_code or not result.runs:
            raise AllllmError(
                f"the demo's training stopped early ({result.status}, {result.stopped_by})",
                f"rerun `allllm demo`, or finish it: allllm train --model {MODEL} --only-new",
            )
        run = result.runs[-1]
        self.result.runs.append(run)
        return run

    def status(self) -> dict[str, Any]:
        from allllm.config import load_config
        from allllm.train.checkpoint import checkpoint_summary
        from allllm.use.status import build_status

        cfg = load_config(MODEL)
        report = build_status(
            cfg, checkpoint=checkpoint_summary(cfg.checkpoint_path, warn=self.ui.warn)
        )
        self.ui.status(report)
        self.result.status = report
        return report

    def generate(self) -> GenerationResult:
        from allllm.config import load_config
        from allllm.use.generate import SamplingSettings, generate_text
        from allllm.use.trained import load_trained

        s = self.settings
        trained = load_trained(load_config(MODEL), device="cpu", warn=self.ui.warn)
        self.ui.generation_started(s.prompt)
        generation = generate_text(
            trained,
            s.prompt,
            SamplingSettings(
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                seed=s.seed,
            ),
            on_text=self.ui.text,
        )
        self.ui.generation_finished(generation)
        self.result.generations.append(generation)
        return generation

    def generate_command(self) -> str:
        s = self.settings
        return (
            f"allllm generate --model {MODEL} --prompt {json.dumps(s.prompt)} --max-new-tokens "
            f"{s.max_new_tokens} --temperature {s.temperature} --top-p {s.top_p} --seed {s.seed}"
        )


def run_demo(
    directory: str | Path = DEFAULT_DIR,
    settings: DemoSettings | None = None,
    ui: DemoUI | None = None,
) -> DemoResult:
    """Run the demo in ``directory`` (see the module doc)."""
    settings = settings or DemoSettings()
    ui = ui or QuietDemoUI()
    started = time.monotonic()
    directory = Path(directory)
    rerun = prepare_workspace(directory)
    result = DemoResult(directory=directory, restarted=rerun)
    demo = _Demo(settings, ui, result)
    with inside(directory):
        _first_half(demo, directory, rerun)
        _second_half(demo)
    result.seconds = time.monotonic() - started
    return result


def _first_half(demo: _Demo, directory: Path, rerun: bool) -> None:
    from allllm.config import load_config
    from allllm.demo.corpus import build_corpus, stdlib_dir
    from allllm.model.sizes import count_parameters, format_count

    ui, settings = demo.ui, demo.settings
    config = write_demo_config(settings.config)
    cfg = load_config(MODEL)
    demo.step(
        "A workspace",
        None,
        f"{'Starting over in' if rerun else 'Created'} {directory}: {config} is the `tiny` preset "
        f"(a {format_count(count_parameters(cfg.model))}-parameter phi-style model with a byte "
        "tokenizer, so nothing is downloaded) with training settings for a short demo.",
    )
    version = ".".join(map(str, sys.version_info[:2]))
    parts = demo.parts = build_corpus(settings.part_bytes)
    raw = Path("data/raw")
    raw.mkdir(parents=True, exist_ok=True)
    first = raw / RAW_NAMES[0]
    first.write_text(parts[0], encoding="utf-8")
    demo.step(
        "Raw text",
        None,
        f"Wrote {first} ({_kb(len(parts[0].encode()))}): docstrings of Python {version}'s standard "
        f"library ({stdlib_dir()}), read from the source files with `ast`. Your own text goes in "
        "data/raw/ the same way (.txt, .jsonl, .gz).",
    )
    demo.step(
        "Tokenize",
        f"allllm tokenize --model {MODEL}",
        "Text becomes token ids once, cached as shards in data/ (a .jsonl and a memory-mapped "
        ".bin, plus a .meta.json that identifies the shard by its content).",
    )
    demo.tokenize()
    demo.step(
        "Train on what is new",
        f"allllm train --model {MODEL} --only-new",
        "Trains on the shards this model has not seen — all of them, the first time — and saves "
        "checkpoints; a crash or Ctrl-C resumes exactly where it stopped. About 2 minutes on a "
        "2-core CPU.",
    )
    run = demo.train()
    ui.say(
        f"The loss fell to {run['final_loss']:.2f} nats/token (an untrained model: ~5.6) in "
        f"{run['end_step'] - run['start_step']} steps; validation loss {run['final_val_loss']:.2f}."
        if run.get("final_loss") is not None and run.get("final_val_loss") is not None
        else f"Trained {run['end_step'] - run['start_step']} steps."
    )
    demo.step(
        "Status",
        f"allllm status --model {MODEL}",
        "Which shards the model has seen (at which step) and which are new.",
    )
    demo.status()
    demo.step(
        "Generate",
        demo.generate_command(),
        "The model continues a prompt, streaming text as it is produced. A few minutes of CPU "
        "training give docstring-shaped text: not wise, but clearly not random bytes.",
    )
    demo.generate()


def _second_half(demo: _Demo) -> None:
    ui = demo.ui
    first_end = demo.result.runs[-1]["end_step"]
    second = Path("data/raw") / RAW_NAMES[1]
    parts = demo.parts
    second.write_text(parts[1], encoding="utf-8")
    demo.step(
        "More text arrives",
        f"allllm tokenize --model {MODEL}",
        f"Wrote {second} ({_kb(len(parts[1].encode()))}, more docstrings). Tokenize again: only the "
        "new file is read; the first one is up to date and keeps its shard.",
    )
    summary = demo.tokenize()
    if summary.up_to_date:
        ui.say(f"Up to date, not re-read: {', '.join(summary.up_to_date)}.")
    demo.step(
        "Train only on the new shard",
        f"allllm train --model {MODEL} --only-new",
        f"The model continues from its checkpoint at step {first_end} and trains only the shard it "
        "has not seen; the first shard is not trained again.",
    )
    run = demo.train()
    names = ", ".join(shard_stems(run))
    ui.say(
        f"This run trained {len(run['shards'])} shard(s) ({names}), steps {run['start_step']} → "
        f"{run['end_step']}: it continued from the checkpoint of step {first_end}."
    )
    demo.step(
        "Status again",
        f"allllm status --model {MODEL}",
        "Both shards are seen now, each at the step of the run that trained it.",
    )
    demo.status()
    demo.step(
        "Generate again",
        demo.generate_command(),
        "Same prompt and seed, a model that has read more.",
    )
    demo.generate()
    _measure(demo)


def shard_stems(run: dict[str, Any]) -> list[str]:
    """The shard names (file stems) a ``runs.jsonl`` line trained."""
    from allllm.data.shard_format import parse_shard_name

    stems = []
    for files in (run.get("shard_files") or {}).values():
        parsed = parse_shard_name(next(iter(files.values()), ""))
        if parsed is not None:
            stems.append(parsed.stem)
    return stems


def _measure(demo: _Demo) -> None:
    from allllm.config import load_config
    from allllm.use.evaluate import evaluate_model
    from allllm.use.plot import PLOT_HINT, plot_losses
    from allllm.use.trained import load_trained

    ui = demo.ui
    cfg = load_config(MODEL)
    demo.step(
        "Evaluate",
        f"allllm eval --model {MODEL}",
        "Loss and perplexity on the validation rows: rows of every seen shard that are held out "
        "from training, always the same ones.",
    )
    evaluation = evaluate_model(
        load_trained(cfg, device="cpu", warn=ui.warn), progress=ui.eval_progress(), warn=ui.warn
    )
    demo.result.evaluation = evaluation
    ui.say(
        f"loss {evaluation.loss:.3f}, perplexity {evaluation.perplexity:.2f} over "
        f"{evaluation.tokens:,} tokens of {evaluation.rows} validation rows "
        f"(a uniform guess over 256 bytes: perplexity 256)."
    )
    if not demo.settings.plot:
        return
    demo.step(
        "Plot",
        f"allllm plot --model {MODEL} --out loss.png",
        "Training and validation loss against tokens seen, one band per run.",
    )
    if importlib.util.find_spec("matplotlib") is None:  # an optional extra
        ui.say(f"skipped: matplotlib is not installed — {PLOT_HINT}")
        return
    path, _curves = plot_losses(cfg.checkpoint_path, "loss.png", name=MODEL)
    demo.result.plot = demo.result.directory / path
    ui.say(f"wrote {demo.result.plot}")
