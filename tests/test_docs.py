"""The examples in the docstrings run and print what they show (doctest over every module)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import datapipe
import datapipe.stages

#: every module of the package and of the stage families (stages/, linked in as
#: datapipe/stages; a set, as the walk of datapipe reaches them too)
MODULES = sorted(
    {
        info.name
        for package in (datapipe, datapipe.stages)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if info.name != "datapipe.cli.__main__"
    }
)


def test_every_module_is_collected() -> None:
    # the stage families live in stages/ and schemas/, mapped into the package
    assert {"datapipe.stages.represent.dct_decode", "datapipe.engine.runner"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
