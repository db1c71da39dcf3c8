"""Where one launch's time goes: every step from the API call to the owner's browser reaching
the tool, in one list (``python -m bench.launch_bench --timeline``).

Its sources, all on one wall clock (milliseconds from the launch call):

- the bench itself: the launch call and its answer, and every response the owner's browser
  got on its way (the router's 404 before the tunnel is up, the sign-in's redirects, the
  gate's 502 while the tool does not answer yet, the tool's page);
- the local stack's logs (``<data>/logs``): the scheduler placing the instance and sending the
  start, the node receiving it and each state it reports, the router's ``tunnel up``, the
  events the control plane applied, the portal's requests (the sign-in);
- the Docker engine's events for the instance's containers (create, start, exec: the
  readiness probes and the sandbox's bind);
- the listener container's own log lines (timestamped by Docker).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

import docker

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (.*)$")
_ACCESS = re.compile(r'"(GET|POST|PUT|DELETE) ([^ ?"]+)')


@dataclass(order=True, frozen=True)
class Step:
    at: float
    """Wall-clock seconds."""
    source: str
    what: str


def _local(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def log_steps(logs: Path, instance_id: str, since: float, until: float) -> list[Step]:
    """The lines of the stack's logs about ``instance_id`` (or, for the portal's access log
    and the router, any line in the window: the sign-in's requests carry no id)."""
    steps: list[Step] = []
    for path in sorted(logs.glob("*.log")):
        source = path.stem
        for line in path.read_text(errors="replace").splitlines():
            match = _STAMP.match(line)
            if match is None:
                continue
            at = _local(match.group(1))
            if not since - 0.001 <= at <= until:
                continue
            text = match.group(2)
            if source == "portal-access":
                request = _ACCESS.search(text)
                if request is not None and not request.group(2).startswith("/api/instances/"):
                    steps.append(Step(at, "portal", f"{request.group(1)} {request.group(2)}"))
            elif instance_id in text:
                steps.append(Step(at, source, _short(text, instance_id)))
    return steps


def _short(text: str, instance_id: str) -> str:
    for noise in (" INFO ", " DEBUG ", " WARNING "):
        text = text.replace(noise, " ")
    return text.replace(instance_id, "<id>")[:110]


def docker_steps(client: docker.DockerClient, containers: dict[str, str], since: float,
                 until: float) -> list[Step]:
    """The engine's events (create, start, exec...) for the given containers (role -> id)."""
    roles = {container_id: role for role, container_id in containers.items()}
    steps: list[Step] = []
    for event in client.events(since=int(since), until=int(until) + 1, decode=True,
                               filters={"type": "container"}):
        role = roles.get(event.get("Actor", {}).get("ID", ""))
        at = event["timeNano"] / 1e9
        if role is not None and since <= at <= until:
            action = str(event.get("Action") or event.get("status") or "?")
            steps.append(Step(at, "docker", f"{role}: {action.split(':', maxsplit=1)[0]}"))
    return steps


def container_log_steps(client: docker.DockerClient, container_ids: dict[str, str],
                        since: float, until: float) -> list[Step]:
    """Timestamped log lines of the given containers (role -> id)."""
    steps: list[Step] = []
    for role, container_id in container_ids.items():
        try:
            raw = client.api.logs(container_id, timestamps=True, since=int(since))
        except docker.errors.NotFound:
            continue
        for line in raw.decode(errors="replace").splitlines():
            stamp, _, text = line.partition(" ")
            try:
                at = datetime.datetime.fromisoformat(stamp[:26] + "+00:00").timestamp()
            except ValueError:
                continue
            if since <= at <= until:
                steps.append(Step(at, role, text.split(" ", 2)[-1][:110]))
    return steps


def render(steps: list[Step], began: float) -> str:
    lines = ["| ms | source | step |", "| ---: | --- | --- |"]
    last = None
    for step in sorted(steps):
        if (step.source, step.what) == last:
            continue  # a retry's line again (the gate's "cannot reach the tool")
        last = (step.source, step.what)
        lines.append(f"| {1000 * (step.at - began):7.0f} | {step.source} | {step.what} |")
    return "\n".join(lines)


def merge(*groups: list[Step]) -> list[Step]:
    return sorted(step for group in groups for step in group)


def browser_step(at: float, status: int, url: str) -> Step:
    host_path = re.sub(r"^https?://", "", url)
    return Step(at, "browser", f"{status} {host_path[:90]}")
