"""The front door: :func:`run` and :func:`validate`. The CLI and the demo call these; so can you.

>>> import datapipe
>>> datapipe.validate("no-such-pipeline.yaml")
[Problem(path='', message='pipeline file not found: no-such-pipeline.yaml')]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, ValidationError

from datapipe.config import RunSpec
from datapipe.errors import ConfigError, Problem
from datapipe.graph import Pipeline
from datapipe.urls import local_path

if TYPE_CHECKING:
    from datapipe.engine.report import RunReport
    from datapipe.hooks import RunHooks

EXECUTORS = ("local", "dask")
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


class SettingsError(ConfigError):
    """A run setting (an argument of :func:`run`) is out of range or unknown."""

    def render(self) -> str:
        return "invalid run settings: " + "; ".join(str(p) for p in self.problems)


class RunSettings(RunSpec):
    """The per-run settings a caller may override: the pipeline file's ``run:`` section, with
    the same limits, plus the epoch. Non-finite numbers are refused."""

    model_config = ConfigDict(allow_inf_nan=False)

    epoch: int = Field(0, ge=0, description="The epoch stages see (ctx.epoch).")


def _num(value: Any) -> Any:
    """``0`` for ``0.0``: limits read as the user typed them."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def limit_text(setting: str) -> str:
    """The limits of a setting as text, e.g. ``">= 64"`` for ``memory_mb`` ("" if none)."""
    parts = []
    for item in RunSettings.model_fields[setting].metadata:
        for attr, symbol in _BOUNDS:
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{symbol} {_num(bound)}")
    return ", ".join(parts)


def check_settings(**settings: Any) -> tuple[dict[str, Any], list[Problem]]:
    """Validate run settings (``None`` means "the pipeline file's value"): the typed values
    of those given, and one :class:`Problem` per bad one (path: the setting's name)."""
    given = {k: v for k, v in settings.items() if v is not None}
    try:
        model = RunSettings.model_validate(given)
    except ValidationError as exc:
        return {}, [_setting_problem(err) for err in exc.errors()]
    return {k: getattr(model, k) for k in given}, []


def _setting_problem(err: Any) -> Problem:
    name = ".".join(str(p) for p in err["loc"])
    ctx = err.get("ctx") or {}
    message = err["msg"]
    for attr, symbol in _BOUNDS:
        if attr in ctx:
            message = f"must be {symbol} {_num(ctx[attr])}"
    if err["type"] == "extra_forbidden":
        message = "unknown setting"
    return Problem(name, f"{message}; got {err.get('input')!r}")


def load(pipeline: str | Path | Pipeline, vars: Mapping[str, str] | None = None) -> Pipeline:
    """A :class:`Pipeline` as is, or loaded from a YAML file (``vars`` fill ``${name}``)."""
    if isinstance(pipeline, Pipeline):
        return pipeline
    return Pipeline.from_yaml(pipeline, dict(vars or {}))


def validate(
    pipeline: str | Path | Pipeline, vars: Mapping[str, str] | None = None
) -> list[Problem]:
    """Every problem of a pipeline, before any data is read; an empty list when it is valid.

    ``pipeline`` is a YAML file or a :class:`Pipeline` (already checked when it was built,
    so its list is empty). A problem's ``path`` is the key path of the fault in the file,
    e.g. ``nodes.resize.params.size``."""
    try:
        load(pipeline, vars)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def run(
    pipeline: str | Path | Pipeline,
    out: str | Path,
    *,
    vars: Mapping[str, str] | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    progress: bool = False,
    hooks: RunHooks | None = None,
    retry_errors: bool = False,
    workers: int | None = None,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    retries: int | None = None,
    epoch: int | None = None,
) -> RunReport:
    """Run a pipeline into the output directory ``out``; returns the run report.

    ``pipeline`` is a YAML file (``vars`` fill its ``${name}``) or a :class:`Pipeline`.
    ``executor``: ``"local"`` (this machine; the default) or ``"dask"`` (``scheduler``: the
    address of a running scheduler, else a LocalCluster). ``workers``, ``timeout_s``,
    ``memory_mb`` and ``retries`` override the file's ``run:`` section, with its limits;
    ``epoch`` is what stages see as ``ctx.epoch``. Items that failed in earlier runs stay
    failed unless ``retry_errors``. ``progress`` shows a bar on stderr; ``hooks`` receives
    every event instead. A bad pipeline or setting raises :class:`ConfigError` before the
    output directory is touched; failed items do not raise (see ``report.counts["error"]``).
    """
    from datapipe.executors import get_executor
    from datapipe.hooks import ProgressHooks

    settings, problems = check_settings(
        workers=workers, timeout_s=timeout_s, memory_mb=memory_mb, retries=retries, epoch=epoch
    )
    if executor not in EXECUTORS:
        problems.append(
            Problem("executor", f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
        )
    elif scheduler and executor != "dask":
        problems.append(Problem("scheduler", "needs executor='dask'"))
    try:
        out = local_path(str(out))
    except ValueError as exc:
        problems.append(Problem("out", str(exc)))
    if problems:
        raise SettingsError(problems)
    loaded = load(pipeline, vars)
    if hooks is None and progress:
        hooks = ProgressHooks()
    extra: dict[str, Any] = {"scheduler": scheduler} if executor == "dask" else {}
    execute = get_executor(executor)
    report: RunReport = execute(
        loaded, out, **extra, hooks=hooks, retry_errors=retry_errors, **settings
    )
    return report
