"""Regenerate the JSON Schemas shipped in ``datapipe.schemas`` from the code.

python scripts/tools/gen_schemas.py          # rewrite schemas/*.json
python scripts/tools/gen_schemas.py --check  # exit 1 if they are out of date (a test does this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datapipe.config import pipeline_json_schema

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def render() -> dict[str, str]:
    return {
        "pipeline.schema.json": json.dumps(pipeline_json_schema(), indent=2, sort_keys=True) + "\n"
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for name, text in render().items():
        path = SCHEMA_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python scripts/tools/gen_schemas.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
