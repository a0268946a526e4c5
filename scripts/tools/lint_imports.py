"""Check the import rules of pyproject.toml's ``[tool.importlinter]`` with import-linter.

    python scripts/tools/lint_imports.py    # exit 0 when every contract is kept, else 1

``stages/`` installs as ``datapipe.stages`` (setuptools ``package-dir``); in the checkout
``datapipe/stages`` links to it, so a plain ``lint-imports`` sees it too. This script lays the
package out in a temporary folder as it installs (links to the ``.py`` files of every package
pyproject.toml lists) and runs ``lint-imports`` there, where tests/test_layering.py can plant
bad imports without touching the checkout. Run from anywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def package_dirs(pyproject: Path = PYPROJECT) -> dict[str, Path]:
    """``{package: source folder}`` of every package the distribution installs."""
    setup = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setup.get("package-dir", {})
    out = {}
    for package in setup["packages"]:
        # the longest mapped prefix decides where a package's files are
        parent = max(
            (p for p in mapping if package == p or package.startswith(p + ".")),
            key=len,
            default="",
        )
        rest = package[len(parent) :].strip(".")
        base = pyproject.parent / mapping[parent] if parent else pyproject.parent
        out[package] = base.joinpath(*rest.split(".")) if rest else base
    return out


def lay_out(dest: Path, pyproject: Path = PYPROJECT) -> Path:
    """Link the ``.py`` files of every installed package into ``dest``, where the installed
    package has them, and pyproject.toml beside them; returns ``dest``."""
    for package, folder in package_dirs(pyproject).items():
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in folder.glob("*.py"):
            (target / src.name).symlink_to(src.resolve())
    (dest / "pyproject.toml").symlink_to(pyproject.resolve())
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the package laid out in ``tree`` (with its pyproject.toml)."""
    exe = Path(sys.executable).parent / "lint-imports"  # this environment's import-linter
    if not exe.exists():
        exe = Path(shutil.which("lint-imports") or "lint-imports")
    return subprocess.run(
        [str(exe), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},  # this tree's datapipe, not the install
        capture_output=True,
        text=True,
        timeout=300,
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="datapipe-imports-") as tmp:
        proc = lint(lay_out(Path(tmp)))
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
