"""The fault suite's soak: many more cycles than ``make test`` runs of the local stack killed at
random points (:mod:`tests.support.faults`: a user action, a SIGKILL of the stack, the node
daemon, the edge router or all three, a restart, the checks), then the same table.

Everything it makes in Docker carries ``dit4c.bench=<run>`` and is removed at the end; the
stack's data directory is a temporary one under ``build/``. Exits 1 when a check failed.

Run: ``.venv/bin/python -m bench.fault_soak [--cycles 150] [--seed N]`` (the local images are
made sure of first).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import docker

from scripts import images
from scripts.build_images import ImageBuilder, pinned
from scripts.cleanup import remove_labelled
from tests.support.faults import FaultRun, fault_env, run_cycles
from tests.support.local_stack import stack_settings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=150)
    parser.add_argument("--seed", type=int, default=int(uuid.uuid4().int % 10_000))
    args = parser.parse_args()
    run_id = uuid.uuid4().hex[:10]
    label = f"dit4c.bench={run_id}"
    build = Path.cwd() / "build"
    build.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fault-soak-", dir=build))
    client = docker.from_env()
    builder = ImageBuilder(client)
    builder.ensure([images.TEST_TOOL, images.HELPER_BASE])
    helpers_image = pinned(images.HELPERS, builder.helpers().recipe)
    env = fault_env(stack_settings(work / "data", f"dit4c-bench-{run_id}",
                                   {"dit4c.bench": run_id}, helpers_image))
    run = FaultRun(env, client, seed=args.seed)
    try:
        counts = run_cycles(run, args.cycles)
    finally:
        run.close()
        remove_labelled(client, label)
        client.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nfault soak, seed {args.seed}, load average "
          "{:.2f} {:.2f} {:.2f}:".format(*os.getloadavg()))
    print(counts)
    for name in ("lost", "orphan_pods", "stuck", "late"):
        for line in getattr(counts, name):
            print(f"  {name}: {line}")
    return 1 if counts.lost or counts.orphan_pods or counts.stuck or counts.late else 0


if __name__ == "__main__":
    sys.exit(main())
