"""The direction of dependence (DESIGN.md) is checked by import-linter: the contracts in
pyproject.toml's ``[tool.importlinter]``, run over the package as it installs (stages/ as
``datapipe.stages``) by scripts/tools/lint_imports.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lint_imports", ROOT / "scripts" / "tools" / "lint_imports.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_import_contract_is_kept(tmp_path: Path) -> None:
    lint = tool()
    proc = lint.lint(lint.lay_out(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_the_contracts_see_the_stages_and_catch_a_bad_import(tmp_path: Path) -> None:
    lint = tool()
    tree = lint.lay_out(tmp_path)
    assert (tree / "datapipe" / "stages" / "__init__.py").exists()
    (tree / "datapipe" / "stages" / "_probe.py").write_text("from datapipe.engine import driver\n")
    (tree / "datapipe" / "engine" / "_probe.py").write_text("import datapipe.stages\n")
    (tree / "datapipe" / "store" / "_probe.py").write_text("from datapipe import executors\n")
    # a train.* stage may read through the stream's loaders
    train = tree / "datapipe" / "stages" / "train"
    train.mkdir(exist_ok=True)  # the laid-out files are links: write a new module, not into them
    if not (train / "__init__.py").exists():
        (train / "__init__.py").write_text("")
    (train / "_probe.py").write_text("from datapipe.stream import from_shards\n")
    proc = lint.lint(tree)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "datapipe.stages._probe -> datapipe.engine.driver" in out
    assert "datapipe.engine._probe -> datapipe.stages" in out
    assert "datapipe.store._probe -> datapipe.executors" in out
    assert "datapipe.stages.train" not in out
