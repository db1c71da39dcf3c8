"""Saved images beyond the list: sharing (users and expiring links), export links, deletion.

- **Sharing** is the owner's (or an admin's): with a user by name, or by a link valid
  ``hours`` (6 by default, as the original DIT4C) that any logged-in user redeems to get the
  image in their list. Revoking a user, or a link (with everyone who redeemed it), ends their
  pulls within a registry token's life (``protocol.registry.USER_TOKEN_LIFETIME``).
- **Export** gives whoever may launch the image an expiring link to the image exporter
  (``DIT4C_EXPORT_URL``); the link's token is a registry token for that one image, so the image
  server itself decides whether the download may go on.
- **Deleting** a saved image deletes its manifest on the image server first (a failure there
  leaves everything as it was), then its record and every grant and link; the image server's
  garbage collection frees the layers.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import urllib.error
from collections.abc import Callable
from datetime import UTC, datetime

from control_plane.accounts import User
from control_plane.bodies import AcceptLink, ImageShare
from control_plane.catalog import Catalog
from control_plane.config import Config
from control_plane.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from control_plane.records import Image
from control_plane.registry import RegistryTokens
from control_plane.replies import ExportLink, ImageShared, ShareLink
from control_plane.shares import LINK, Shares
from protocol.ids import new_id
from protocol.registry import EXPORT_CLAIM, PULL, repository_access

IMAGE = "image"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class SavedImages:
    def __init__(self, *, config: Config, catalog: Catalog, shares: Shares,
                 registry: RegistryTokens, accounts_exist: Callable[[str], bool]) -> None:
        self.config = config
        self.catalog = catalog
        self.shares = shares
        self.registry = registry
        self.accounts_exist = accounts_exist

    def _owned(self, user: User, image_id: str) -> Image:
        image = self.catalog.get_for(image_id, user.username, admin=user.admin)
        if image.in_catalog:
            raise BadRequest("catalog images are everyone's already")
        if image.owner != user.username and not user.admin:
            raise Forbidden("only the owner can share this image")
        return image

    # --- sharing ----------------------------------------------------------------------

    def sharing(self, user: User, image_id: str) -> ImageShared:
        image = self._owned(user, image_id)
        return self._shared(image)

    def share(self, user: User, image_id: str, body: ImageShare) -> ImageShared:
        image = self._owned(user, image_id)
        made: ShareLink | None = None
        if body.link_id is not None:
            if not body.revoke:
                raise BadRequest("with 'link_id', say 'revoke': true")
            self.shares.revoke_link(IMAGE, image.image_id, body.link_id)
        elif body.link:
            made = self._make_link(user, image, body.hours)
        elif body.username is not None:
            if body.username == image.owner:
                raise BadRequest("the owner always has access")
            if body.revoke:
                self.shares.revoke(IMAGE, image.image_id, body.username)
            elif not self.accounts_exist(body.username):
                raise NotFound(f"no user {body.username!r}")
            else:
                self.shares.grant(IMAGE, image.image_id, body.username, user.username)
        else:
            raise BadRequest("say who: 'username', 'link': true, or 'link_id'")
        return self._shared(image, made)

    def _make_link(self, user: User, image: Image, hours: float) -> ShareLink:
        link_id, secret = new_id(), secrets.token_urlsafe(24)
        expires = time.time() + hours * 3600
        self.shares.add_link(IMAGE, image.image_id, link_id, secret_sha256=_sha256(secret),
                             expires_at=int(expires), by=user.username)
        token = f"{image.image_id}.{link_id}.{secret}"
        return ShareLink(id=link_id, url=f"{self.config.portal_url}/#/images/accept/{token}",
                         expires_at=_iso(expires))

    def _shared(self, image: Image, made: ShareLink | None = None) -> ImageShared:
        now = time.time()
        links = [ShareLink(id=item["grantee"][len(LINK):], url=None,
                           expires_at=_iso(item["expires_at"]))
                 for item in self.shares.links(IMAGE, image.image_id)
                 if item["expires_at"] > now]
        if made is not None:
            links = [made if link.id == made.id else link for link in links]
        return ImageShared(id=image.image_id,
                           shared_with=sorted(self.shares.grantees(IMAGE, image.image_id)),
                           links=links)

    def accept(self, user: User, body: AcceptLink) -> Image:
        """Redeem a link: the image joins the user's list (their own: nothing to do)."""
        image_id, link_id, secret = body.token.split(".")
        link = self.shares.link(IMAGE, image_id, link_id)
        if link is None or not hmac.compare_digest(link["secret_sha256"], _sha256(secret)):
            raise NotFound("this link is not valid (it was revoked, or never made)")
        if link["expires_at"] <= time.time():
            raise NotFound("this link has expired: ask for a new one")
        image = self.catalog.get(image_id)
        if image.owner != user.username:
            self.shares.grant(IMAGE, image_id, user.username, link["by"], via=link_id)
        return image

    # --- export -----------------------------------------------------------------------

    def export(self, user: User, image_id: str) -> ExportLink:
        image = self.catalog.get_for(image_id, user.username, admin=user.admin)
        if image.repository is None or image.digest is None:
            raise Conflict("only images saved to the image server can be exported")
        if not self.config.export_url:
            raise Conflict("no image exporter is configured (DIT4C_EXPORT_URL)")
        lifetime = self.config.export_link_seconds
        token = self.registry.token(
            user.username, [repository_access(image.repository, PULL)], lifetime=lifetime,
            extra={EXPORT_CLAIM: {"repository": image.repository, "digest": image.digest,
                                  "name": image.name}})
        return ExportLink(url=f"{self.config.export_url}/export/{token}",
                          expires_at=_iso(time.time() + lifetime))

    # --- delete -----------------------------------------------------------------------

    def delete(self, user: User, image_id: str) -> None:
        image = self.catalog.get_for(image_id, user.username, admin=user.admin)
        if not image.in_catalog and image.owner != user.username and not user.admin:
            raise Forbidden("only the owner deletes a saved image")
        if image.repository is not None and image.digest is not None:
            try:
                self.registry.delete_manifest(image.repository, image.digest)
            except (urllib.error.URLError, OSError) as exc:
                raise Unavailable(f"the image server did not answer ({exc}); nothing was "
                                  "deleted, try again") from None
        self.catalog.remove(image_id, user.username, admin=user.admin)
        if not image.in_catalog:
            self.shares.remove_all(IMAGE, image.image_id)
