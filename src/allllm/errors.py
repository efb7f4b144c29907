"""User-facing errors.

Every mistake a user can make (a bad config, a missing file, a shard made with
another tokenizer, ...) is raised as :class:`AllllmError`. The CLI prints it as
one line on stderr and exits 1; Python callers can catch it. Anything else that
escapes is a bug in allllm and is reported as such.
"""

from __future__ import annotations


class AllllmError(Exception):
    """An error the user can fix: a one-line message saying what, where and how.

    ``hint`` is the "how to fix it" part; it is appended after " — " so the
    message stays one line.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = " ".join(str(message).split()) if "\n" in str(message) else str(message)
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text} — {self.hint}"
        return text


class ConfigError(AllllmError):
    """A config file is missing, is not valid JSON, or does not validate."""


class DataError(AllllmError):
    """Raw text or shards cannot be read or would be written wrongly."""


class TokenizerError(AllllmError):
    """A tokenizer cannot be loaded or does not fit the config."""


class CheckpointError(AllllmError):
    """A checkpoint directory cannot be used."""


class TrainingError(AllllmError):
    """Training cannot go on: too many non-finite steps, or weights that are not finite."""


class LockError(AllllmError):
    """Another process holds the checkpoint directory."""


class FormatVersionError(AllllmError):
    """A file was written by a newer allllm, in a format this one cannot read.

    Never a subclass of the corruption errors above: a file of a newer format
    is valid, so nothing may fall back, rebuild or start over because of it.
    """
