"""Pieces every benchmark uses: child processes with logs, an nginx config, a wrk run.

Each ``bench/<name>.py`` compares one part of dit4c with the same work done directly; these
helpers keep the harness the same across them, so the figures are comparable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Processes:
    work: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log(self, name: str) -> Path:
        """Where the output of the process started as ``name`` goes."""
        return self.work / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with self.log(name).open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, cwd=cwd)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def report(self) -> None:
        """Print the exit status and log tail of every process that has died."""
        for proc in self.procs:
            if proc.poll() is not None:
                print(f"{proc.args!r} exited with {proc.returncode}", file=sys.stderr)
        for log in sorted(self.work.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}", file=sys.stderr)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                self.stop(proc)


def nginx_conf(work: Path, name: str, port: int, body: str, http_extra: str = "") -> Path:
    conf = work / f"{name}.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  {http_extra}
  access_log off;
  client_body_temp_path {work}/{name}-body;
  proxy_temp_path {work}/{name}-proxy;
  fastcgi_temp_path {work}/{name}-fcgi;
  uwsgi_temp_path {work}/{name}-uwsgi;
  scgi_temp_path {work}/{name}-scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    {body}
  }}
}}
""")
    return conf


def wrk_rate(url: str, headers: dict[str, str], duration: int, *, threads: int = 1,
             connections: int = 50) -> float:
    """Requests per second of ``wrk`` with keep-alive; any non-2xx/3xx answer is a failure."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if match is None or errors is not None:
        raise RuntimeError(f"wrk failed:\n{out}")
    return float(match.group(1))
