"""``python tests/cli_with_test_stages.py ARGS``: the real datapipe CLI, with the test stages
of fault_stages.py registered (for tests that run the CLI in a subprocess)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_stages
from datapipe.cli import main

fault_stages.register_all()
if __name__ == "__main__":  # LocalCluster workers re-import the main module
    sys.exit(main(sys.argv[1:]))
