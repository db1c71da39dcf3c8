"""Run checkov over ``infra/terraform`` from a virtualenv of its own (``make checkov``).

checkov pins dozens of dependencies that would fight the project's, so it lives in
``$DIT4C_CACHE_DIR/checkov-<version>/`` (default ``~/.cache/dit4c``; shared by every checkout
on the machine, made once in about a minute, reused afterwards). It runs offline
(``--skip-download``: nothing is fetched from checkov's platform). Every skip in the module is a
``#checkov:skip=<id>:<why>`` comment beside the resource it concerns.

``python -m scripts.checkov [checkov arguments]`` prints checkov's report; exit status is
checkov's (non-zero when a check fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

from scripts.build_images import default_cache_dir

VERSION: Final = "3.3.30"
TERRAFORM_DIR: Final = Path(__file__).resolve().parent.parent / "infra" / "terraform"


def ensure_checkov(cache: Path | None = None) -> Path:
    """The checkov executable of the pinned version, installed on first use."""
    venv = (cache or default_cache_dir()) / f"checkov-{VERSION}"
    marker = venv / ".installed"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)  # a half-made one from an interrupted install
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", f"checkov=={VERSION}"], check=True)
        marker.write_text(VERSION)
    return venv / "bin" / "checkov"


def run(arguments: list[str], *, capture: bool = False) -> subprocess.CompletedProcess[str]:
    checkov = ensure_checkov()
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    return subprocess.run([str(checkov), "--directory", str(TERRAFORM_DIR), "--framework",
                           "terraform", "--skip-download", "--compact", *arguments],
                          capture_output=capture, text=True, env=env, check=False)


def main(argv: list[str]) -> int:
    return run(argv).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
