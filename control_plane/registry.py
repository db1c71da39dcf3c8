"""The image server's token service (Docker's token protocol) and who may do what there.

Repositories on the image server:

- ``users/<user>/<image id>``: a user's saved image (:func:`user_repository`; a username that
  is not a valid path component becomes ``users-x/<hex of the name>``, so two users can never
  share a namespace);
- the repositories that catalog entries name on this registry (``<DIT4C_REGISTRY>/<repo>...``);
- anything else an admin pushes (the helpers image for nodes, ``dit4c/helpers``, catalog tools).

Scopes follow access (:meth:`RegistryTokens.allowed`):

============  ===================================================================================
user          pull and push in their own namespace; pull of saved images shared with them and of
              catalog repositories
admin         as a user, plus pull and push of every repository outside ``users``/``users-x``
node          pull of the helpers repository and of catalog repositories
============  ===================================================================================

The control plane hands out the other tokens itself, each for one job: a node's push of one
save (in ``save_instance``), a node's pull of one image (in ``start_instance``), its own manifest
deletes, and export links. Anything not allowed is left out of the token, as Docker's token
spec asks (the registry then refuses the request), never an error; bad credentials are 401.
"""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from control_plane.accounts import Accounts, User
from control_plane.bodies import Login
from control_plane.config import Config
from control_plane.errors import BadRequest, Conflict, Unauthorized
from control_plane.keys import KeyStore
from control_plane.nodes import Nodes
from control_plane.records import Image
from control_plane.replies import RegistryToken
from protocol.errors import RegistryError
from protocol.registry import (
    COMPONENT,
    PULL,
    PUSH,
    USER_TOKEN_LIFETIME,
    Access,
    Reference,
    parse_reference,
    parse_scope,
    registry_claims,
    repository_access,
)

USER_PREFIXES = ("users/", "users-x/")
HELPERS_REPOSITORY = "dit4c/helpers"
SAVED_TAG = "saved"
"""The tag of a saved image in its repository (garbage collection keeps tagged manifests)."""
MAX_SCOPES = 20
JOB_TOKEN_LIFETIME = 3600
"""A node's token for one start or save: a big pull or push takes a while, and the registry
checks the token at every request."""


def user_repository(username: str, image_id: str) -> str:
    """Where a user's saved image lives."""
    if COMPONENT.fullmatch(username):
        return f"users/{username}/{image_id}"
    return f"users-x/{username.encode().hex()}/{image_id}"


def user_namespace(username: str) -> str:
    return user_repository(username, "x").rsplit("/", 1)[0] + "/"


@dataclass(frozen=True)
class Caller:
    """Who asks ``/registry/token``: a user, or a node (by its own signed token)."""

    subject: str
    user: User | None = None
    node_id: str | None = None


class RegistryTokens:
    """Issues registry tokens signed by the portal's keys; see the module docstring.

    ``catalog_repositories()`` lists the repositories catalog entries name on this registry;
    ``shared_repositories(username)`` those of saved images shared with the user.
    """

    def __init__(self, *, config: Config, keys: KeyStore, accounts: Accounts, nodes: Nodes,
                 catalog_repositories: Callable[[], set[str]],
                 shared_repositories: Callable[[str], set[str]]) -> None:
        self.config = config
        self.keys = keys
        self.accounts = accounts
        self.nodes = nodes
        self._catalog = catalog_repositories
        self._shared = shared_repositories

    @property
    def enabled(self) -> bool:
        return bool(self.config.registry)

    def require(self) -> None:
        if not self.enabled:
            raise Conflict("no image server is configured (DIT4C_REGISTRY)")

    # --- references ---------------------------------------------------------------------

    def reference(self, repository: str, digest: str | None = None, tag: str | None = None
                  ) -> str:
        """The image reference nodes pull: ``<registry>/<repository>[:tag][@digest]``."""
        return str(Reference(self.config.registry, repository, tag, digest))

    def repository_of(self, image: str) -> str | None:
        """The repository of ``image`` when it lives on this image server, else None."""
        return repository_on(self.config.registry, image)

    # --- tokens -------------------------------------------------------------------------

    def token(self, subject: str, access: Sequence[Access], *,
              lifetime: int = USER_TOKEN_LIFETIME, extra: dict[str, Any] | None = None) -> str:
        claims = registry_claims(issuer=self.config.portal_url,
                                 service=self.config.registry_service, subject=subject,
                                 access=access, lifetime=lifetime, extra=extra)
        return self.keys.sign_with_chain(claims)

    def answer(self, *, authorization: str | None, service: str | None,
               scopes: Iterable[str], address: str) -> RegistryToken:
        """``GET /registry/token``: the caller's token for what of ``scopes`` it may have."""
        self.require()
        if service is not None and service != self.config.registry_service:
            raise BadRequest(f"unknown service {service!r}; this is "
                             f"{self.config.registry_service!r}")
        caller = self.caller(authorization, address)
        requested = []
        for text in list(scopes)[:MAX_SCOPES + 1]:
            try:
                requested.append(parse_scope(text))
            except RegistryError as exc:
                raise BadRequest(str(exc)) from None
        if len(requested) > MAX_SCOPES:
            raise BadRequest(f"at most {MAX_SCOPES} scopes per token")
        granted = self.allowed(caller, requested)
        token = self.token(caller.subject, granted)
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return RegistryToken(token=token, access_token=token, expires_in=USER_TOKEN_LIFETIME,
                             issued_at=issued)

    def caller(self, authorization: str | None, address: str) -> Caller:
        """Basic credentials of a user, or a node's own bearer token; else Unauthorized."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                username, _, password = base64.b64decode(value.strip(), validate=True) \
                    .decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise Unauthorized("malformed Basic credentials") from None
            user = self.accounts.authenticate(
                Login.parse({"username": username, "password": password}), address)
            return Caller(user.username, user=user)
        if scheme.lower() == "bearer":
            try:
                node_id = jwt.decode(value.strip(), options={"verify_signature": False}).get(
                    "iss")
            except jwt.exceptions.InvalidTokenError:
                raise Unauthorized("malformed bearer token") from None
            if not isinstance(node_id, str):
                raise Unauthorized("the bearer token names no node")
            node = self.nodes.authenticate(node_id, f"Bearer {value.strip()}")
            return Caller(f"node:{node.node_id}", node_id=node.node_id)
        raise Unauthorized("log in with your dit4c username and password")

    def allowed(self, caller: Caller, requested: Sequence[Access]) -> list[Access]:
        """What of ``requested`` the caller may have (actions narrowed, the rest dropped)."""
        granted = []
        catalog: set[str] | None = None
        shared: set[str] | None = None
        for access in requested:
            if access.type != "repository":
                continue
            try:
                name = repository_access(access.name, ()).name
            except RegistryError:
                continue
            actions: set[str] = set()
            user = caller.user
            if user is not None and name.startswith(user_namespace(user.username)):
                actions |= set(PUSH)
            if user is not None and user.admin and not name.startswith(USER_PREFIXES):
                actions |= set(PUSH)
            if caller.node_id is not None and name == HELPERS_REPOSITORY:
                actions |= set(PULL)
            if "pull" not in actions:
                catalog = self._catalog() if catalog is None else catalog
                if name in catalog:
                    actions |= set(PULL)
            if "pull" not in actions and user is not None:
                shared = self._shared(user.username) if shared is None else shared
                if name in shared:
                    actions |= set(PULL)
            wanted = tuple(a for a in access.actions if a in actions)
            if wanted:
                granted.append(Access("repository", name, wanted))
        return granted

    def may_pull(self, username: str, repository: str) -> bool:
        """Whether ``username`` (as a plain user) may pull ``repository`` now."""
        caller = Caller(username, user=User(username, False))
        return bool(self.allowed(caller, [Access("repository", repository, PULL)]))

    # --- the control plane's own requests ----------------------------------------------

    def check(self) -> None:
        """Health probe: the image server answers its API root (401 without a token)."""
        request = urllib.request.Request(f"{self.config.registry_url}/v2/")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=2):  # noqa: S310 - configured URL
                return
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code != 401:
                raise

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete one manifest (its storage is freed by the next garbage collection); a
        manifest already gone is success."""
        self.require()
        token = self.token("dit4c-control-plane",
                           [Access("repository", repository, ("delete",))], lifetime=60)
        request = urllib.request.Request(  # noqa: S310 - the configured registry
            f"{self.config.registry_url}/v2/{repository}/manifests/{digest}", method="DELETE",
            headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10):  # noqa: S310
                return
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code != 404:
                raise


def repository_on(registry: str, image: str) -> str | None:
    """The repository of ``image`` if it lives on ``registry`` (``host[:port]``), else None."""
    if not registry:
        return None
    try:
        reference = parse_reference(image)
    except RegistryError:
        return None
    return reference.repository if reference.registry == registry else None


def repositories(registry: str, images: Iterable[Image]) -> set[str]:
    """The repositories on ``registry`` of ``images``."""
    return {name for image in images if (name := repository_on(registry, image.image))}
