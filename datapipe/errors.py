"""The one exception tree of datapipe, and the closed set of per-item error classes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Closed set of classes an item error row can carry (the manifest's ``error_class``).
ERROR_CLASSES: tuple[str, ...] = (
    "truncated",  # input ends early
    "corrupt",  # input is malformed
    "unsupported",  # valid input of a kind the stage does not handle
    "decode_bomb",  # declared size absurd for the file, refused before allocating
    "empty",  # zero-byte input, zero frames, zero points
    "nonfinite",  # NaN or infinite values
    "invalid",  # a value of the wrong type or range
    "security",  # a key or path that would escape the output, a non-local path
    "io",  # the input could not be read (permissions, vanished)
    "timeout",  # the item ran past its time limit; its worker was killed
    "oom",  # the item ran past its memory cap
    "crash",  # the worker process died on a signal while handling the item
    "failed",  # any other exception raised by a stage
)


class DatapipeError(Exception):
    """Base class of every error datapipe raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One configuration problem: where it is and what was expected."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(DatapipeError):
    """A pipeline definition or CLI usage is wrong; carries every problem found at once."""

    def __init__(self, problems: Iterable[Problem | str], source: str | None = None) -> None:
        self.problems = [p if isinstance(p, Problem) else Problem("", p) for p in problems]
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        where = f" in {self.source}" if self.source else ""
        if len(self.problems) == 1:
            return f"invalid pipeline{where}: {self.problems[0]}"
        lines = [f"{len(self.problems)} problems{where}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ParamError(ConfigError):
    """A stage parameter is missing, unknown or of the wrong type."""


class StoreBusyError(DatapipeError):
    """Another run holds the lock on the output directory."""


class StoreError(DatapipeError):
    """The output directory cannot be used (not writable, not a datapipe store, ...)."""


class ExecutorError(DatapipeError):
    """The execution backend failed (an unreachable or lost Dask scheduler, ...).

    ``exit_code`` is 2 when the user can fix it before any work (a wrong address), 1 when
    the run broke off (completed work is committed; re-running resumes)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class SinkError(DatapipeError):
    """A Sink cannot do its work with the committed samples (a trainer given one class, or
    an empty split). The items stay committed; the run reports the sink's error (its
    ``sinks.NODE`` becomes ``{"error": CLASS, "message": ...}``) and the CLI exits 3.

    Parameters
    ----------
    error_class : a short name for the kind of problem (``too_few_classes``, ...).
    message : what is wrong and what would fix it, for a person.
    """

    def __init__(self, error_class: str, message: str) -> None:
        self.error_class = error_class
        self.message = message
        super().__init__(f"{error_class}: {message}")


class ItemError(DatapipeError):
    """A single item cannot be processed; becomes an error row, the run goes on.

    Parameters
    ----------
    error_class : one of :data:`ERROR_CLASSES`.
    message : what is wrong with the item, for a person.
    """

    def __init__(self, error_class: str, message: str) -> None:
        if error_class not in ERROR_CLASSES:
            raise ValueError(
                f"unknown error class {error_class!r}; expected one of {ERROR_CLASSES}"
            )
        self.error_class = error_class
        self.message = message
        super().__init__(f"{error_class}: {message}")


class Filtered(DatapipeError):
    """Raised by a Map stage to drop an item on purpose; the reason lands in the manifest."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def classify_exception(exc: BaseException) -> str:
    """Map an exception raised while processing an item to an error class."""
    if isinstance(exc, ItemError):
        return exc.error_class
    if isinstance(exc, MemoryError):
        return "oom"
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return "io"
    if isinstance(exc, EOFError):
        return "truncated"
    return "failed"
