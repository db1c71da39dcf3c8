"""The Lambda artifact's cold-start cost: importing the app from the unzipped ``make package``
build in a clean virtualenv of the runtime's Python that holds nothing else, against that
interpreter doing nothing (goal: < 300 ms over bare Python).

The artifact is built for this machine's architecture (the same recipe as ``build/lambda.zip``;
only the wheels' platform differs) and unzipped; the virtualenv is made ``--without-pip``, so the
artifact (on ``PYTHONPATH``, as Lambda puts ``/var/task`` first) is all there is to import.
Measured side by side, median of N runs of each, wall and CPU (user + sys of the child: what a
busy shared machine distorts least):

1. ``python -c pass``;
2. ``import control_plane.app`` (what a cold start imports before the first event);
3. the same plus ``control_plane.services`` and boto3 (what the first request adds).

Run: ``.venv/bin/python -m bench.artifact_bench [--runs N]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from infra import package

GOAL_MS = 300.0


def _time(python: Path, code: str, env: dict[str, str], runs: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([str(python), "-c", code], check=True, env=env)
        walls.append((time.perf_counter() - start) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    target = package.Target.from_template(arch=package.host_arch())
    interpreter = package.find_python(target.python)
    if interpreter is None:
        sys.exit(f"no Python {target.python} here (the template's runtime): pyenv install it "
                 "or set DIT4C_LAMBDA_PYTHON")
    out, size, _ = package.build(package.BUILD / "bench" / "lambda.zip",
                                        arch=target.arch)
    with tempfile.TemporaryDirectory(dir=package.BUILD) as scratch:
        task = Path(scratch) / "task"
        with zipfile.ZipFile(out) as archive:
            archive.extractall(task)
        venv = Path(scratch) / "venv"
        subprocess.run([str(interpreter), "-m", "venv", "--without-pip", str(venv)], check=True)
        python = venv / "bin" / "python"
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(task), "HOME": scratch,
               "LANG": "C.UTF-8"}
        rows = [
            ("python -c pass", "pass"),
            ("import control_plane.app (cold start)", "import control_plane.app"),
            ("+ control_plane.services, boto3 (first request)",
             "import control_plane.app, control_plane.services, boto3"),
        ]
        results = [(what, *_time(python, code, env, args.runs)) for what, code in rows]
    load = os.getloadavg()
    print(f"artifact: {out.name} for {target.arch}, {size / 2**20:.1f} MiB zipped; "
          f"python{target.python} venv without pip; {args.runs} runs each; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'what':<52} {'wall ms':>8} {'CPU ms':>8} {'CPU over bare':>14}")
    bare_cpu = results[0][2]
    for what, wall, cpu in results:
        over = "" if what.startswith("python") else f"+{cpu - bare_cpu:.0f} ms"
        print(f"{what:<52} {wall:>8.0f} {cpu:>8.0f} {over:>14}")
    cold = results[1][2] - bare_cpu
    print(f"cold-start import over bare python: {cold:.0f} ms CPU "
          f"({'within' if cold < GOAL_MS else 'OVER'} the {GOAL_MS:.0f} ms goal)")


if __name__ == "__main__":
    main()
