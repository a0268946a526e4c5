"""Stage name -> class. Built-in and third-party stages register the same way: entry points
in the ``datapipe.stages`` group. Classes can also be registered at run time (tests, notebooks).

Lookups are lazy: listing names reads only the entry-point metadata, and a stage's module is
imported when its class is first asked for, so ``datapipe validate`` on an image pipeline
never imports the video or point-cloud stacks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from difflib import get_close_matches
from importlib.metadata import EntryPoint, entry_points

from datapipe.errors import ConfigError, Problem
from datapipe.stage import Stage

ENTRY_POINT_GROUP = "datapipe.stages"
_extra: dict[str, type[Stage]] = {}
_loaded: dict[str, type[Stage]] = {}
_entry_cache: dict[str, EntryPoint] | None = None


class StageLoadError(ConfigError):
    """A registered stage whose entry point cannot be imported (a broken or missing plugin)."""

    def __init__(self, name: str, target: str, reason: str) -> None:
        self.name = name
        super().__init__([Problem("", f"stage {name!r} ({target}) cannot be loaded: {reason}")])

    def render(self) -> str:
        return str(self.problems[0])


def register(cls: type[Stage]) -> type[Stage]:
    """Register a stage class under its ``name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no stage name")
    _extra[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Forget a stage registered with :func:`register` (entry points stay)."""
    _extra.pop(name, None)


def _entry_points() -> dict[str, EntryPoint]:
    """The ``datapipe.stages`` entry points by stage name; nothing is imported."""
    global _entry_cache
    if _entry_cache is None:
        _entry_cache = {ep.name: ep for ep in entry_points().select(group=ENTRY_POINT_GROUP)}
    return _entry_cache


_load_entry_points = _entry_points  # the name tests/test_conformance.py uses


def names() -> list[str]:
    """Every known stage name, sorted; imports no stage."""
    return sorted({*_entry_points(), *_extra})


def get(name: str) -> type[Stage]:
    """The class of stage ``name``, importing its module on first use.

    Raises ``KeyError`` (with a did-you-mean message) for an unknown name and
    :class:`StageLoadError` when the stage's module cannot be imported."""
    if name in _extra:
        return _extra[name]
    if name in _loaded:
        return _loaded[name]
    ep = _entry_points().get(name)
    if ep is None:
        raise KeyError(unknown_stage_message(name))
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin is named, and hides no other stage
        raise StageLoadError(name, ep.value, f"{type(exc).__name__}: {exc}") from exc
    if getattr(cls, "name", None) != name:
        found = getattr(cls, "name", None)
        raise StageLoadError(name, ep.value, f"it loads a stage named {found!r}")
    _loaded[name] = cls
    return cls


class StageTable(MutableMapping[str, type[Stage]]):
    """Every known stage by name, sorted. Membership and iteration read names only; looking
    a class up imports its module. Items set on a table stay in that table (the registry
    itself changes through :func:`register`)."""

    def __init__(self, stage_names: list[str]) -> None:
        self._names = set(stage_names)
        self._own: dict[str, type[Stage]] = {}

    def __getitem__(self, name: str) -> type[Stage]:
        if name in self._own:
            return self._own[name]
        if name not in self._names:
            raise KeyError(name)
        return get(name)

    def __setitem__(self, name: str, cls: type[Stage]) -> None:
        self._names.add(name)
        self._own[name] = cls

    def __delitem__(self, name: str) -> None:
        if name not in self._names:
            raise KeyError(name)
        self._names.discard(name)
        self._own.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)


def all_stages() -> StageTable:
    """Every known stage, by name, sorted; classes are imported as they are looked up."""
    return StageTable(names())


def unknown_stage_message(name: str, stages: Mapping[str, object] | None = None) -> str:
    """``unknown stage 'x'`` with the closest known name, or the list of known names."""
    known = list(stages) if stages is not None else names()
    hint = get_close_matches(name, known, n=1)
    suffix = f"; did you mean {hint[0]!r}?" if hint else f" (known: {', '.join(known)})"
    return f"unknown stage {name!r}{suffix}"
