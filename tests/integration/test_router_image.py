"""The router's image (``dit4c/router:dev``, built offline by scripts/build_images.py) runs as a
public host would run it: as its unprivileged user on ports 443 and 80, certificate files from a
read-only mount, reloaded by ``docker kill --signal HUP``, stopped cleanly by ``docker stop``."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from docker.models.containers import Container
from docker.models.networks import Network

from scripts import images
from scripts.build_images import ImageBuilder, pinned
from tests.support.certs import der, self_signed

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

DOMAIN = "dit4c.test"
HOST = f"abc123.{DOMAIN}"


@pytest.fixture(scope="session")
def router_image(image_builder: ImageBuilder) -> str:
    image_builder.ensure([images.HELPER_BASE])
    return pinned(images.ROUTER, image_builder.router().recipe)


def https_get(address: str, path: str = "/") -> tuple[str, bytes]:
    """The status line of ``GET path`` for HOST over TLS, and the certificate served (DER)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((address, 443), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=HOST) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        status = tls.recv(4096).split(b"\r\n", 1)[0].decode()
        certificate = tls.getpeercert(binary_form=True)
        assert certificate is not None
        return status, certificate


def until(check: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_router_image_serves_https_redirects_reloads_and_stops(
        router_image: str, run_container: Callable[..., Container], docker_network: Network,
        container_ip: Callable[[Container, Network], str], tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir(mode=0o755)
    first = self_signed(tmp_path, f"*.{DOMAIN}", prefix="first-")
    second = self_signed(tmp_path, f"*.{DOMAIN}", prefix="second-")

    def install(pair: tuple[str, str]) -> None:
        for source, name in zip(pair, ("cert.pem", "key.pem"), strict=True):
            shutil.copyfile(source, tls / f"{name}.new")
            os.chmod(tls / f"{name}.new", 0o644)  # the image's user (uid 10001) reads them
            os.replace(tls / f"{name}.new", tls / name)

    install(first)
    router = run_container(router_image, environment={
        "DIT4C_ROUTER_DOMAIN": DOMAIN,
        "DIT4C_ROUTER_JWKS_URL": "http://127.0.0.1:9/.well-known/jwks.json",
        "DIT4C_ROUTER_TLS_LISTEN": "0.0.0.0:443", "DIT4C_ROUTER_REDIRECT_LISTEN": "0.0.0.0:80",
        "DIT4C_ROUTER_TLS_CERT": "/etc/dit4c/tls/cert.pem",
        "DIT4C_ROUTER_TLS_KEY": "/etc/dit4c/tls/key.pem",
    }, volumes={str(tls): {"bind": "/etc/dit4c/tls", "mode": "ro"}})
    try:
        address = container_ip(router, docker_network)
        until(lambda: https_get(address)[1] == der(first[0]), "no HTTPS on 443")
        # No instance has a tunnel here: the router's own 404, over TLS.
        assert https_get(address, "/lab")[0] == "HTTP/1.1 404 Not Found"
        response = requests.get(f"http://{address}:80/lab?x=1", headers={"Host": HOST},
                                allow_redirects=False, timeout=5)
        assert response.status_code == 308
        assert response.headers["Location"] == f"https://{HOST}/lab?x=1"

        install(second)
        router.kill(signal="SIGHUP")
        until(lambda: https_get(address)[1] == der(second[0]), "SIGHUP did not reload")

        router.reload()
        assert router.attrs["Config"]["User"] == images.HELPERS_USER
        router.stop(timeout=10)
        router.reload()
        assert router.attrs["State"]["ExitCode"] == 0
    except BaseException:
        print(router.logs().decode(errors="replace"))
        raise
