"""README.md documents every built-in stage by name, in a block generated from the stages'
classes (scripts/tools/gen_readme_stages.py), so the docs cannot drift from the code."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from datapipe.stage import Map

ROOT = Path(__file__).resolve().parent.parent


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_readme_stages", ROOT / "scripts" / "tools" / "gen_readme_stages.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_stage_reference_is_up_to_date() -> None:
    gen = generator()
    block = gen.current_block((ROOT / "README.md").read_text())
    assert block is not None, "README.md lacks the stage reference markers"
    assert block == gen.render(), "run: python scripts/tools/gen_readme_stages.py"


def test_readme_names_every_builtin_stage() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in generator().builtin_stages() if f"`{name}`" not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_a_stage_added_without_docs_fails_the_check() -> None:
    gen = generator()

    class NewStage(Map):
        name = "new.stage"
        description = "A stage nobody documented yet."

    stages = {**gen.builtin_stages(), "new.stage": NewStage}
    readme = (ROOT / "README.md").read_text()
    assert gen.current_block(readme) != gen.render(stages)
    assert "| `new.stage` | map | A stage nobody documented yet. |" in gen.render(stages)


def test_check_mode_passes_on_the_committed_readme() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "tools" / "gen_readme_stages.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
