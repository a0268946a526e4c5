"""``python -m datapipe``: the ``datapipe`` command line (as ``python -m datapipe.cli``)."""

import sys

from datapipe.cli import main

if __name__ == "__main__":  # guarded: Dask's LocalCluster re-imports the main module
    sys.exit(main())
