"""Storage benchmark: /mnt/storage in a tool container against a local volume and direct S3.

    python -m bench.storage_bench [--files 1000] [--big-mib 1024] [--compare]

Everything runs in containers on one bridge network whose gateway serves moto's S3 (as pods
reach the local stack): the tool is an unprivileged container of the helpers image (its
python3 runs the workload) binding the storage volume ``rslave`` exactly as the node daemon
binds it (``node_daemon.storage``), and the storage helper runs with the node's privileges and
limits. For each way:

- **local**: a Docker volume at /mnt/storage;
- **direct**: boto3 in a container to moto (``put_object``/``get_object`` per small file,
  ``upload_file``/``download_file`` for the big one);
- **ours**: the storage helper (``python3 -m helpers.storage``);
- with ``--compare``, **rclone** (``rclone mount --vfs-cache-mode full``) and **s3fs**, from an
  image the bench makes from the helper base with Debian's packages (needs Debian's mirror).

Small files: ``--files`` files of 4 KiB written (for a mount: until all are in S3), read by a
fresh mount (the first read), then read three more times on that mount (median: "after
first"). Big file: ``--big-mib`` MiB written in 1 MiB writes and closed (until stored), then
read whole by a fresh mount. Live: a file written on one mount is polled for on a second
running mount, then deleted. Goals: small reads after the first within 3x of the local volume;
the big file at >= 50% of direct S3's speed; live changes within 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import boto3
import docker
import docker.errors

from infra.local.moto_server import MotoServer
from node_daemon import storage
from node_daemon.network import ensure_pods_network
from node_daemon.pods import HELPER_LIMITS
from protocol import pod
from protocol.messages import StorageAccess
from scripts import images
from scripts.build_images import ImageBuilder, pinned
from scripts.cleanup import remove_labelled

TOOL_UID = "1000"
COMPARE_IMAGE = "dit4c-bench/fuse-compare:bookworm"

# The tool's side: one process per phase, as a user's program would do it.
WORKLOAD = r"""
import json, os, sys, time
op, path = sys.argv[1], sys.argv[2]
t = time.monotonic()
if op == "small_write":
    os.makedirs(path, exist_ok=True)
    data = os.urandom(4096)
    for i in range(int(sys.argv[3])):
        with open(f"{path}/f{i:05d}", "wb") as f:
            f.write(data)
elif op == "small_read":
    for i in range(int(sys.argv[3])):
        with open(f"{path}/f{i:05d}", "rb") as f:
            f.read()
elif op == "big_write":
    block = os.urandom(1 << 20)
    with open(path, "wb", buffering=0) as f:
        for _ in range(int(sys.argv[3])):
            f.write(block)
elif op == "big_read":
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
elif op == "appear":  # poll until the file exists, or is gone ("gone")
    want = sys.argv[3] == "exists"
    while os.path.exists(path) != want:
        if time.monotonic() - t > 60:
            sys.exit(1)
        time.sleep(0.05)
print(json.dumps(time.monotonic() - t))
"""

DIRECT = r"""
import json, os, sys, time
import boto3
from boto3.s3.transfer import TransferConfig
endpoint, bucket, prefix, op, n = sys.argv[1:6]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="bench", aws_secret_access_key="bench")
config = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20,
                        max_concurrency=4)
if op == "big_write":
    with open("/tmp/big", "wb") as f:
        for _ in range(int(n)):
            f.write(os.urandom(1 << 20))
t = time.monotonic()
if op == "small_write":
    data = os.urandom(4096)
    for i in range(int(n)):
        s3.put_object(Bucket=bucket, Key=f"{prefix}small/f{i:05d}", Body=data)
elif op == "small_read":
    for i in range(int(n)):
        s3.get_object(Bucket=bucket, Key=f"{prefix}small/f{i:05d}")["Body"].read()
elif op == "big_write":
    s3.upload_file("/tmp/big", bucket, f"{prefix}big", Config=config)
elif op == "big_read":
    s3.download_file(bucket, f"{prefix}big", "/tmp/big", Config=config)
print(json.dumps(time.monotonic() - t))
"""

RCLONE = ("umount -l /mnt/storage 2>/dev/null; mkdir -p /mnt/storage; "
          "export RCLONE_S3_PROVIDER=Other RCLONE_S3_ACCESS_KEY_ID=bench "
          "RCLONE_S3_SECRET_ACCESS_KEY=bench RCLONE_S3_ENDPOINT=$ENDPOINT; exec rclone mount "
          ":s3:$BUCKET/$PREFIX /mnt/storage --allow-other --allow-non-empty "
          "--vfs-cache-mode full --dir-cache-time 5s --use-server-modtime "
          "--vfs-fast-fingerprint --vfs-write-back 0s --umask 0")
S3FS = ("umount -l /mnt/storage 2>/dev/null; mkdir -p /mnt/storage; "
        "echo bench:bench > /tmp/passwd && chmod 600 /tmp/passwd && exec s3fs "
        "$BUCKET:/${PREFIX%/} /mnt/storage -f -o passwd_file=/tmp/passwd -o url=$ENDPOINT "
        "-o use_path_request_style -o allow_other -o umask=0 -o nonempty "
        "-o use_cache=/tmp/cache -o stat_cache_expire=5")


@dataclass
class Results:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)

    def put(self, way: str, what: str, seconds: float) -> None:
        self.rows.setdefault(way, {})[what] = seconds
        print(f"  {way:7} {what:18} {seconds:8.3f} s", flush=True)


class Bench:
    def __init__(self, files: int, big_mib: int, compare: bool) -> None:
        self.files, self.big_mib = files, big_mib
        self.run = uuid.uuid4().hex[:8]
        self.labels = {"dit4c.bench": self.run}
        self.client = docker.from_env(timeout=600)
        self.helpers = self._helpers_image()
        self.network = f"dit4c-bench-{self.run}"
        self.gateway = ensure_pods_network(self.client, self.network, self.labels)
        self.moto = MotoServer(self.gateway, 0)
        self.endpoint = self.moto.start().url or ""
        self.bucket = "bench"
        self.s3: Any = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                    aws_access_key_id="bench",
                                    aws_secret_access_key="bench")  # noqa: S106 - moto
        self.s3.create_bucket(Bucket=self.bucket)
        self.compare = compare and self._compare_image()
        self.results = Results()

    def close(self) -> None:
        for container in self.client.containers.list(
                all=True, filters={"label": f"dit4c.bench={self.run}"}):
            with suppress(docker.errors.APIError):
                container.stop(timeout=storage.STOP_SECONDS)
        for volume in self.client.volumes.list(filters={"label": f"dit4c.bench={self.run}"}):
            with suppress(docker.errors.APIError):
                storage.detach(self.client, self.helpers,
                               storage.volume_path(self.client, volume.name), self.labels)
        remove_labelled(self.client, f"dit4c.bench={self.run}")
        self.moto.stop()

    # -- pieces ----------------------------------------------------------------------------------

    def _helpers_image(self) -> str:
        """This checkout's helpers image by its recipe tag: on a shared engine another
        checkout may move ``dit4c/helpers:dev`` to its own code at any time."""
        builder = ImageBuilder(self.client)
        builder.ensure([images.HELPER_BASE])
        return pinned(images.HELPERS, builder.helpers().recipe)

    def _compare_image(self) -> bool:
        try:
            self.client.images.get(COMPARE_IMAGE)
            return True
        except docker.errors.ImageNotFound:
            pass
        print("making the rclone/s3fs image (apt-get in a container)...", flush=True)
        try:
            box = self.client.containers.run(
                images.HELPER_BASE, ["sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND="
                                     "noninteractive apt-get install -y -qq "
                                     "--no-install-recommends rclone s3fs fuse3"],
                detach=True, labels=self.labels)
            if box.wait(timeout=600)["StatusCode"] != 0:
                raise RuntimeError(box.logs(tail=5).decode(errors="replace"))
            repository, tag = COMPARE_IMAGE.split(":")
            box.commit(repository, tag)
            return True
        except (docker.errors.DockerException, RuntimeError) as exc:
            print(f"no rclone/s3fs comparison: {exc}", file=sys.stderr)
            return False

    def volume(self) -> str:
        name = f"dit4c-bench-{self.run}-{uuid.uuid4().hex[:6]}"
        self.client.volumes.create(name, labels=self.labels)
        return name

    def local_volume(self) -> str:
        """A plain volume the tool's user may write in."""
        volume = self.volume()
        self.client.containers.run(self.helpers, ["chmod", "0777", pod.STORAGE_MOUNT],
                                   remove=True, user="0", network_mode="none",
                                   labels=self.labels,
                                   mounts=[docker.types.Mount(pod.STORAGE_MOUNT, volume,
                                                              type="volume")])
        return volume

    def tool(self, volume: str, *argv: str, local: bool = False) -> float:
        if local:
            mounts = [docker.types.Mount(pod.STORAGE_MOUNT, volume, type="volume")]
        else:
            mounts = storage.tool_mounts(storage.volume_path(self.client, volume))
        output = self.client.containers.run(
            self.helpers, ["python3", "-c", WORKLOAD, *argv], remove=True, user=TOOL_UID,
            cap_drop=["ALL"], security_opt=["no-new-privileges"], network_mode="none",
            mounts=mounts, labels=self.labels)
        return float(json.loads(output.decode().strip().splitlines()[-1]))

    def direct(self, op: str, prefix: str, count: int) -> float:
        output = self.client.containers.run(
            self.helpers, ["python3", "-c", DIRECT, self.endpoint, self.bucket, prefix, op,
                             str(count)], remove=True, network=self.network,
            labels=self.labels)
        return float(json.loads(output.decode().strip().splitlines()[-1]))

    @contextmanager
    def mount(self, way: str, prefix: str) -> Iterator[str]:
        """A storage helper (``way``) serving ``prefix`` in a new volume; yields the volume."""
        volume = self.volume()
        path = storage.volume_path(self.client, volume)
        access = StorageAccess(kind="s3", bucket=self.bucket, prefix=prefix,
                               credentials={"access_key_id": "bench",
                                            "secret_access_key": "bench"},
                               endpoint_url=self.endpoint)
        spec: dict[str, Any] = {**HELPER_LIMITS, **storage.PRIVILEGES,
                                "mounts": storage.helper_mounts(path), "detach": True,
                                "network": self.network, "labels": self.labels,
                                "cap_drop": ["ALL"], "init": True}
        if way == "ours":
            container = self.client.containers.run(
                self.helpers, ["python3", "-m", "helpers.storage"],
                environment=storage.settings_env(access), **spec)
        else:
            spec["cap_add"] = ["SYS_ADMIN"]
            spec.pop("tmpfs")
            container = self.client.containers.run(
                COMPARE_IMAGE, ["sh", "-c", RCLONE if way == "rclone" else S3FS],
                environment={"ENDPOINT": self.endpoint, "BUCKET": self.bucket,
                             "PREFIX": prefix}, **spec)
        try:
            self._wait_mounted(container, path)
            yield volume
        finally:
            container.stop(timeout=storage.STOP_SECONDS)
            container.remove(force=True)
            with suppress(docker.errors.APIError):
                storage.detach(self.client, self.helpers, path, self.labels)

    def _wait_mounted(self, container: Any, path: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open("/proc/self/mountinfo") as mounts:
                if f" {path}/storage " in mounts.read():
                    time.sleep(0.5)  # the first requests answered
                    return
            container.reload()
            if container.status == "exited":
                break
            time.sleep(0.1)
        raise RuntimeError(f"no mount: {container.logs(tail=20).decode(errors='replace')}")

    def stored(self, prefix: str, count: int, size: int | None = None) -> None:
        """Wait until ``count`` objects are under ``prefix`` (``size``: the first has it)."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix,
                                             MaxKeys=count + 1).get("Contents", [])
            files = [o for o in listed if not o["Key"].endswith("/")]
            if len(files) >= count and (size is None or files[0]["Size"] == size):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{prefix}: not stored after 600 s")

    # -- the measurements ------------------------------------------------------------------------

    def small(self, way: str) -> None:
        n, put = self.files, self.results.put
        if way == "local":
            volume = self.local_volume()
            put(way, "small write", self.tool(volume, "small_write", "/mnt/storage/s", str(n),
                                              local=True))
            reads = [self.tool(volume, "small_read", "/mnt/storage/s", str(n), local=True)
                     for _ in range(4)]
            put(way, "small read 1st", reads[0])
            put(way, "small read after", statistics.median(reads[1:]))
            return
        prefix = f"{way}-{uuid.uuid4().hex[:6]}/"
        if way == "direct":
            put(way, "small write", self.direct("small_write", prefix, n))
            put(way, "small read 1st", self.direct("small_read", prefix, n))
            return
        with self.mount(way, prefix) as volume:
            started = time.monotonic()
            self.tool(volume, "small_write", "/mnt/storage/small", str(n))
            self.stored(prefix + "small/", n)
            put(way, "small write", time.monotonic() - started)
        with self.mount(way, prefix) as volume:
            reads = [self.tool(volume, "small_read", "/mnt/storage/small", str(n))
                     for _ in range(4)]
            put(way, "small read 1st", reads[0])
            put(way, "small read after", statistics.median(reads[1:]))

    def big(self, way: str) -> None:
        mib, put = self.big_mib, self.results.put
        prefix = f"{way}-big-{uuid.uuid4().hex[:6]}/"
        if way == "direct":
            put(way, "big write", self.direct("big_write", prefix, mib))
            put(way, "big read", self.direct("big_read", prefix, mib))
            return
        if way == "local":
            volume = self.local_volume()
            put(way, "big write", self.tool(volume, "big_write", "/mnt/storage/big", str(mib),
                                            local=True))
            put(way, "big read", self.tool(volume, "big_read", "/mnt/storage/big", local=True))
            return
        with self.mount(way, prefix) as volume:
            started = time.monotonic()
            self.tool(volume, "big_write", "/mnt/storage/big", str(mib))
            self.stored(prefix + "big", 1, mib << 20)
            put(way, "big write", time.monotonic() - started)
        with self.mount(way, prefix) as volume:
            put(way, "big read", self.tool(volume, "big_read", "/mnt/storage/big"))

    def live(self, way: str) -> None:
        prefix = f"{way}-live-{uuid.uuid4().hex[:6]}/"
        with self.mount(way, prefix) as one, self.mount(way, prefix) as two:
            self.tool(two, "appear", "/mnt/storage/x", "gone")  # listed once, empty
            started = time.monotonic()
            self.tool(one, "small_write", "/mnt/storage/d", "1")
            self.tool(two, "appear", "/mnt/storage/d/f00000", "exists")
            self.results.put(way, "live: appears", time.monotonic() - started)
            started = time.monotonic()
            self.client.containers.run(
                self.helpers, ["rm", "/mnt/storage/d/f00000"], remove=True, user=TOOL_UID,
                mounts=storage.tool_mounts(storage.volume_path(self.client, one)),
                network_mode="none", labels=self.labels)
            self.tool(two, "appear", "/mnt/storage/d/f00000", "gone")
            self.results.put(way, "live: disappears", time.monotonic() - started)

    def report(self) -> str:
        rows = self.results.rows
        local, direct = rows.get("local", {}), rows.get("direct", {})
        lines = [f"load: {os.getloadavg()[0]:.2f} (1 min) {self.files} small files, "
                 f"{self.big_mib} MiB big file", "",
                 "| way | small write s | small read 1st s | small read after s | "
                 "after / local | big write s | big write / direct | big read s | "
                 "big read / direct | live appear s | live gone s |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

        def cell(value: float | None, fmt: str = "{:.3f}") -> str:
            return "-" if value is None else fmt.format(value)

        def speed(way: dict[str, float], what: str) -> float | None:
            # Speed as a share of direct S3's (1.0 = as fast).
            if what in way and what in direct and way[what]:
                return direct[what] / way[what]
            return None

        for name, way in rows.items():
            after = way.get("small read after")
            lines.append("| " + " | ".join([
                name, cell(way.get("small write")), cell(way.get("small read 1st")),
                cell(after),
                cell(after / local["small read after"] if after and "small read after" in local
                     else None, "{:.2f}x"),
                cell(way.get("big write")), cell(speed(way, "big write"), "{:.0%}"),
                cell(way.get("big read")), cell(speed(way, "big read"), "{:.0%}"),
                cell(way.get("live: appears"), "{:.1f}"),
                cell(way.get("live: disappears"), "{:.1f}")]) + " |")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--compare", action="store_true",
                        help="also rclone mount and s3fs (makes their image with apt-get)")
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args(argv)
    bench = Bench(args.files, args.big_mib, args.compare)
    ways = ["local", "direct", "ours"] + (["rclone", "s3fs"] if bench.compare else [])
    steps: list[Callable[[str], None]] = [bench.small]
    if not args.skip_big:
        steps.append(bench.big)
    try:
        print(f"uptime: {os.getloadavg()}", flush=True)
        for step in steps:
            for way in ways:
                step(way)
        for way in ways[2:]:
            bench.live(way)
        print(bench.report())
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
