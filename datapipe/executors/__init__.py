"""Executors by name. Each is a function of (pipeline, output directory, settings)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datapipe.executors.local import run_local


def run_dask(*args: Any, **kwargs: Any) -> Any:
    """Imported lazily: ``dask.distributed`` is only loaded when it is used."""
    from datapipe.executors.dask_executor import run_dask as run

    return run(*args, **kwargs)


EXECUTORS: dict[str, Callable[..., Any]] = {"local": run_local, "dask": run_dask}


def get_executor(name: str) -> Callable[..., Any]:
    if name not in EXECUTORS:
        raise KeyError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
    return EXECUTORS[name]
