"""The house rules of stages/: one folder per family, a family imports only itself and
stages/common/, common/ imports no family, and each package says what belongs in it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ROOT / "stages"
FAMILIES = sorted(p.name for p in STAGES.iterdir() if (p / "__init__.py").exists())


def stage_imports(path: Path) -> set[str]:
    """The ``datapipe.stages.X`` packages a module imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["datapipe", "stages"] and len(parts) > 2:
                found.add(parts[2])
    return found


def test_the_families_are_the_documented_ones() -> None:
    assert FAMILIES == sorted(
        ["common", "compressed", "io", "keyframes", "points", "represent", "subset", "train"]
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_imports_only_itself_and_common(family: str) -> None:
    allowed = {family} if family == "common" else {family, "common"}
    for path in sorted((STAGES / family).glob("*.py")):
        wrong = stage_imports(path) - allowed
        assert not wrong, f"stages/{family}/{path.name} imports datapipe.stages.{sorted(wrong)}"


@pytest.mark.parametrize("family", FAMILIES)
def test_each_package_says_what_belongs_there(family: str) -> None:
    doc = importlib.import_module(f"datapipe.stages.{family}").__doc__ or ""
    assert len(doc.strip().splitlines()) >= 3, f"stages/{family}/__init__.py: say what goes here"


def test_every_registered_stage_lives_in_a_family_folder() -> None:
    from importlib.metadata import entry_points

    builtin = [
        ep
        for ep in entry_points().select(group="datapipe.stages")
        if ep.module.startswith("datapipe.stages.")
    ]
    assert len(builtin) >= 32
    for ep in builtin:
        family = ep.module.split(".")[2]
        assert family in FAMILIES and family != "common", f"{ep.name}: {ep.value}"
