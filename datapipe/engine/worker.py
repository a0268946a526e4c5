"""Child process main: builds an ItemRunner from the parent's payload, caps its own memory,
then answers tasks until its input pipe closes. Started by :mod:`datapipe.engine.pool`.

The protocol runs over two inherited pipe fds (never stdout, which stage code may print to).
"""

from __future__ import annotations

import os
import resource
import sys
from multiprocessing.connection import Connection


def _cap_memory(memory_mb: int) -> None:
    if memory_mb <= 0:
        return
    limit = memory_mb * 2**20
    # RLIMIT_DATA counts heap and anonymous mmaps (Linux >= 4.7), not the shared libraries
    # mapped by imports, so a cap near the real working set does not break `import torch`.
    for which in (resource.RLIMIT_DATA,):
        _soft, hard = resource.getrlimit(which)
        new_hard = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(which, (min(limit, new_hard), new_hard))


def main(argv: list[str]) -> int:
    fd_in, fd_out, memory_mb = int(argv[0]), int(argv[1]), int(argv[2])
    os.dup2(2, 1)  # anything printed by stage code goes to stderr
    tasks = Connection(fd_in, readable=True, writable=False)
    results = Connection(fd_out, readable=False, writable=True)
    from datapipe.engine.runner import ItemRunner

    pipeline, fitted, epoch = tasks.recv()
    runner = ItemRunner(pipeline, fitted, epoch)
    _cap_memory(memory_mb)
    results.send(("ready", os.getpid()))
    while True:
        try:
            task = tasks.recv()
        except EOFError:
            return 0
        if task is None:
            return 0
        results.send(runner.run(task))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
