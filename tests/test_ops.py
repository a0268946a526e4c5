"""``datapipe.ops`` keeps its convention (the module docstring): verb names, data first and
options keyword-only, a "Returns" section and an example for every name, deprecated old names
that warn, and a README table that lists exactly ``__all__``.

The examples themselves run in ``test_docs.py`` (doctest over every module); here each name is
checked to have one there that is not skipped, so nothing runs twice.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from datapipe import ops

README = Path(__file__).resolve().parents[1] / "README.md"

#: the verbs an ops function name may start with; a new one is a decision, made here
VERBS = {
    "align", "allocate", "check", "compute", "decode", "dequantize", "draw", "encode", "fit",
    "group", "plot", "pool", "read", "resolve", "sample", "sanitize", "score", "select",
    "voxelize", "zigzag",
}  # fmt: skip


def _docstring_test(obj: Any) -> doctest.DocTest | None:
    """The doctest that ``doctest.testmod`` (test_docs.py) runs for ``obj``'s docstring."""
    module = importlib.import_module(obj.__module__)
    name = f"{module.__name__}.{obj.__qualname__}"
    return next((t for t in doctest.DocTestFinder().find(module) if t.name == name), None)


def _params(obj: Any) -> list[inspect.Parameter]:
    return list(inspect.signature(obj).parameters.values())


def _required(obj: Any) -> list[str]:
    return [p.name for p in _params(obj) if p.default is inspect.Parameter.empty]


def test_the_families_list_each_name_once_and_all_is_their_union() -> None:
    names = [n for family in ops._FAMILIES.values() for n in family]
    assert len(names) == len(set(names))
    assert sorted(names) == ops.__all__ == sorted(ops._EXPORTS)
    assert set(dir(ops)) == set(ops.__all__)


@pytest.mark.parametrize("name", ops.__all__)
def test_name_follows_the_convention(name: str) -> None:
    obj = getattr(ops, name)
    if inspect.isclass(obj):
        assert re.fullmatch(r"(?:[A-Z][a-z]+)+", name), f"class {name} is not a CamelCase noun"
        return
    assert callable(obj)
    assert name.split("_")[0] in VERBS, f"ops.{name} does not start with a verb in VERBS"
    params = _params(obj)
    assert params, f"ops.{name} takes no data"
    data = params[0]
    assert data.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, f"ops.{name}: data first"
    assert data.default is inspect.Parameter.empty, f"ops.{name}: the data has no default"
    for p in params:
        assert p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD), f"ops.{name}: *{p.name}"
        if p.default is not inspect.Parameter.empty:
            assert p.kind is p.KEYWORD_ONLY, f"ops.{name}: option {p.name!r} is not keyword-only"


@pytest.mark.parametrize(
    "name",
    ops.__all__,
)
def test_docstring_says_what_it_returns_and_has_an_example_that_runs(name: str) -> None:
    obj = getattr(ops, name)
    doc = inspect.getdoc(obj) or ""
    if not inspect.isclass(obj):
        assert re.search(r"^Returns\n-------\n\S", doc, re.M), f"ops.{name}: no Returns section"
    test = _docstring_test(obj)
    assert test is not None and test.examples, f"ops.{name}: no example in its docstring"
    run = [e for e in test.examples if not e.options.get(doctest.SKIP)]
    assert run, f"ops.{name}: every example is skipped"
    assert any(re.search(rf"\b{name}\(", e.source) for e in run) or any(
        re.search(rf"\b{obj.__name__}\(", e.source) for e in run
    ), f"ops.{name}: the example never calls it"


@pytest.mark.parametrize("old", sorted(ops._DEPRECATED))
def test_old_names_warn_and_name_the_new_one(old: str) -> None:
    new, old_target = ops._DEPRECATED[old]
    assert old not in ops.__all__ and new in ops.__all__
    with pytest.warns(DeprecationWarning, match=rf"ops\.{old} is deprecated.*ops\.{new}$"):
        value = getattr(ops, old)
    assert callable(value)
    if old_target is None:
        assert value is getattr(ops, new)
    with pytest.warns(DeprecationWarning):  # every use warns, not only the first
        getattr(ops, old)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ops.nope  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.read_iframes is ops.read_iframes  # current names do not warn


def _readme_rows() -> list[tuple[str, str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## `datapipe.ops`", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) \| `(\w+)\(([^)]*)\)` \|", section, re.M)
    return [(family, name, args) for family, name, args in rows]


def test_readme_table_lists_every_name_by_family_with_its_required_arguments() -> None:
    want = [
        (family, name, ", ".join(_required(getattr(ops, name))))
        for family, names in ops._FAMILIES.items()
        for name in names
    ]
    got = _readme_rows()
    table = "\n".join(f"| {f} | `{n}({a})` |" for f, n, a in want)
    assert got == want, f"README.md's ops table must list, in this order:\n{table}"
