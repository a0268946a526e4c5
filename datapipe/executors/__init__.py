"""Executors by name. Each is a function of (pipeline, output directory, settings)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datapipe.executors.local import run_local

EXECUTORS: dict[str, Callable[..., Any]] = {"local": run_local}


def get_executor(name: str) -> Callable[..., Any]:
    if name not in EXECUTORS:
        raise KeyError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
    return EXECUTORS[name]
