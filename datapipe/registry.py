"""Stage name -> class. Built-in and third-party stages register the same way: entry points
in the ``datapipe.stages`` group. Classes can also be registered at run time (tests, notebooks).
"""

from __future__ import annotations

import logging
from difflib import get_close_matches
from importlib.metadata import entry_points

from datapipe.stage import Stage

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "datapipe.stages"
_extra: dict[str, type[Stage]] = {}
_cache: dict[str, type[Stage]] | None = None


def register(cls: type[Stage]) -> type[Stage]:
    """Register a stage class under its ``name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no stage name")
    _extra[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _extra.pop(name, None)


def _load_entry_points() -> dict[str, type[Stage]]:
    global _cache
    if _cache is None:
        found: dict[str, type[Stage]] = {}
        for ep in entry_points().select(group=ENTRY_POINT_GROUP):
            try:
                cls = ep.load()
            except Exception as exc:  # a broken plugin must not hide the others
                logger.warning("cannot load stage %r from %s: %s", ep.name, ep.value, exc)
                continue
            if cls.name != ep.name:
                logger.warning("entry point %r loads stage named %r; skipped", ep.name, cls.name)
                continue
            found[ep.name] = cls
        _cache = found
    return _cache


def all_stages() -> dict[str, type[Stage]]:
    """Every known stage, by name, sorted."""
    merged = {**_load_entry_points(), **_extra}
    return dict(sorted(merged.items()))


def get(name: str) -> type[Stage]:
    stages = all_stages()
    if name not in stages:
        raise KeyError(unknown_stage_message(name, stages))
    return stages[name]


def unknown_stage_message(name: str, stages: dict[str, type[Stage]] | None = None) -> str:
    names = list(stages or all_stages())
    hint = get_close_matches(name, names, n=1)
    suffix = f"; did you mean {hint[0]!r}?" if hint else f" (known: {', '.join(names)})"
    return f"unknown stage {name!r}{suffix}"
