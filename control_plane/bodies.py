"""Every JSON request body the API takes, typed once (limits, patterns, defaults).

Each type parses itself (:meth:`Body.parse`: the clean value, or BadRequest naming the field)
and is the schema of its operation's ``requestBody`` in ``GET /api/openapi.json``; see
:mod:`control_plane.schema` for how a field's type and limits become both. Only rules that
depend on stored state (does the image exist, is the join token valid, is the key a key) are
checked later, by the domain modules.
"""

from __future__ import annotations

from typing import Any, Self

from control_plane.schema import NOT_BLANK, Limits, field, json_object, parse
from protocol.ids import ID_MAX_LENGTH, ID_PATTERN

USERNAME_PATTERN = r"^[a-z0-9][a-z0-9_.@-]{0,63}$"
USERNAME_SAYS = ("1-64 characters: lower-case letters, digits, '_', '.', '@', '-', starting "
                 "with a letter or digit")
IMAGE_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$"
NODE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
"""Characters; scrypt's work grows with the input, so it is bounded (4 KiB of UTF-8 at most)."""
MIN_CPU = 0.001
"""One millicore: capacity is kept in integer millicores (``control_plane.nodes``)."""
MAX_CPU = 256.0
MAX_MEMORY_MB = 4 * 1024 * 1024
DEFAULT_CLUSTER = "default"
LINK_HOURS = 6.0
"""How long a share link can be redeemed, unless asked otherwise (as the original DIT4C)."""
MAX_LINK_HOURS = 30 * 24.0
LINK_TOKEN_PATTERN = r"^[a-z0-9]{1,63}\.[a-z0-9]{1,63}\.[A-Za-z0-9_-]{16,64}$"  # noqa: S105 - a pattern
"""``<image id>.<link id>.<secret>``."""
MAX_JOIN_TOKEN_HOURS = 30 * 24.0
DEFAULT_CPU = 1.0
DEFAULT_MEMORY_MB = 1024


class Body:
    """Base of the request bodies."""

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        return parse(cls, body)


def _id(**limits: Any) -> Any:
    return field(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH, says="an id (1-63 lower-case "
                 "letters and digits)", **limits)


def _text(max_length: int, **limits: Any) -> Any:
    return field(max_length=max_length, pattern=NOT_BLANK, says="a non-empty string",
                 strip=True, **limits)


def _username() -> Any:
    return field(max_length=64, pattern=USERNAME_PATTERN, says=USERNAME_SAYS)


@json_object
class Login(Body):
    """``POST /api/login``: a local account's credentials."""

    username: str = field(max_length=256)
    password: str = field(max_length=MAX_PASSWORD)


@json_object
class NewUser(Body):
    """``POST /api/users`` (admin): a local account."""

    username: str = _username()
    password: str = field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)
    admin: bool = False


@json_object
class NewImage(Body):
    """``POST /api/images`` (admin), and the local bootstrap's catalog: a catalog entry."""

    name: str = _text(100)
    image: str = field(max_length=255, pattern=IMAGE_REF_PATTERN,
                       says="an image reference (repo[:tag] or repo@digest)")
    port: int = field(minimum=1, maximum=65535)
    cpu: float = field(default=DEFAULT_CPU, minimum=MIN_CPU, maximum=MAX_CPU)
    memory_mb: int = field(default=DEFAULT_MEMORY_MB, minimum=16, maximum=MAX_MEMORY_MB)
    tags: list[str] = field(default_factory=list, max_items=20,
                            items=Limits(min_length=1, max_length=40))


@json_object
class Share(Body):
    """``POST /api/instances/{id}/share`` and ``/api/images/{id}/share``: grant or revoke."""

    username: str = _username()
    revoke: bool = False


@json_object
class ImageShare(Body):
    """``POST /api/images/{id}/share``: one of: grant (or ``revoke``) ``username``; make an
    expiring link (``link``, valid ``hours``); revoke a link (``link_id`` with ``revoke``)."""

    username: str | None = field(default=None, max_length=64, pattern=USERNAME_PATTERN,
                                 says=USERNAME_SAYS)
    revoke: bool = False
    link: bool = False
    hours: float = field(default=LINK_HOURS, minimum=0.1, maximum=MAX_LINK_HOURS)
    link_id: str | None = _id(default=None)


@json_object
class AcceptLink(Body):
    """``POST /api/images/links``: redeem a share link (the token at the end of its URL)."""

    token: str = field(max_length=200, pattern=LINK_TOKEN_PATTERN,
                       says="the token of a share link")


@json_object
class Launch(Body):
    """``POST /api/instances``: ``name`` defaults to the image's name."""

    image_id: str = _id()
    cluster_id: str = _id(default=DEFAULT_CLUSTER)
    name: str | None = _text(100, default=None)


MAX_CLUSTER_USERS = 1000


def _cluster_users() -> Any:
    return field(default_factory=list, max_items=MAX_CLUSTER_USERS,
                 items=Limits(max_length=64, pattern=USERNAME_PATTERN),
                 description="who may launch into the cluster when it is not public "
                             "(admins always may)")


@json_object
class NewCluster(Body):
    """``POST /api/clusters`` (admin)."""

    name: str = _text(100)
    public: bool = field(default=True, description="everyone may launch into it")
    users: list[str] = _cluster_users()


@json_object
class ClusterAccess(Body):
    """``POST /api/clusters/{id}/access`` (admin): who may launch into the cluster."""

    public: bool
    users: list[str] = _cluster_users()


@json_object
class NewJoinToken(Body):
    """``POST /api/clusters/{id}/join-tokens`` (admin); an empty body takes the defaults."""

    hours: float | None = field(default=None, minimum=0.05, maximum=MAX_JOIN_TOKEN_HOURS,
                                description="how long it can be used (default "
                                            "DIT4C_JOIN_TOKEN_HOURS)")


@json_object
class Enroll(Body):
    """``POST /api/nodes/enroll``: a node joins a cluster with a one-time join token."""

    join_token: str = _text(200)
    public_jwk: dict[str, Any] = field(description="the node's public key (EC P-256 or RSA)")
    name: str = field(max_length=63, pattern=NODE_NAME_PATTERN,
                      says="1-63 letters, digits, '_', '.', '-', starting with a letter or digit")
    cpu: float = field(minimum=MIN_CPU, maximum=MAX_CPU)
    memory_mb: int = field(minimum=64, maximum=MAX_MEMORY_MB)



@json_object
class StorageReport(Body):
    """``POST /api/nodes/{node}/instances/{instance}/storage``: how the instance's storage
    helper is, as its node saw it (the answer is renewed credentials)."""

    ok: bool = True
    message: str | None = field(default=None, max_length=500,
                                description="what went wrong, for the instance's user")
    usage_bytes: int | None = field(default=None, minimum=0, maximum=2**62,
                                    description="the user's bytes as the helper counted them")


@json_object
class StorageQuota(Body):
    """``PUT /api/users/{username}/storage`` (admin): a user's own quota (null: the default)."""

    quota_mb: int | None = field(minimum=0, maximum=2**31)
