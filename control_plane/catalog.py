"""Images (ImagesTable): the public catalog, users' saved images, and images shared with them.

Catalog entries have ``owner = "_catalog"``; a saved image has its user as owner. Listing is three
queries (catalog, own, shared via SharesTable's ``by-grantee`` index) plus one BatchGetItem: no
Scan. Catalog entries are upserted by image reference (bootstrap) through a second item
``ref:<image reference>`` that holds the entry's id, so two writers cannot make duplicates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from control_plane.bodies import NewImage
from control_plane.clock import now_iso
from control_plane.errors import Forbidden, NotFound
from control_plane.records import CATALOG_OWNER, Image, ImageRef, Instance
from control_plane.shares import Shares
from control_plane.table import ConditionFailed, Item, Table
from protocol.ids import is_id, new_id
from protocol.registry import Reference


class Catalog:
    def __init__(self, images: Table, shares: Shares) -> None:
        self.images = images
        self.shares = shares

    def list_for(self, username: str) -> list[Image]:
        images = self.owned_by(CATALOG_OWNER) + self.owned_by(username)
        return images + self.shared_with(username, skip={i.image_id for i in images})

    def owned_by(self, owner: str) -> list[Image]:
        """The catalog (``CATALOG_OWNER``) or a user's saved images: one Query."""
        return _images(self.images.query("#o = :o", index="by-owner", names={"#o": "owner"},
                                         vals={":o": owner}))

    def shared_with(self, username: str, skip: set[str] | frozenset[str] = frozenset()
                    ) -> list[Image]:
        """Images shared with the user (one Query and one BatchGetItem)."""
        wanted = [{"image_id": i} for i in self.shares.shared_with("image", username)
                  if i not in skip]
        return _images(self.images.batch_get(wanted)) if wanted else []

    def get(self, image_id: str) -> Image:
        image = _image(self.images.get({"image_id": image_id})) if is_id(image_id) else None
        if image is None:
            raise NotFound(f"no image {image_id!r}")
        return image

    def get_for(self, image_id: str, username: str, *, admin: bool) -> Image:
        """An image the user may launch: catalog, own, shared with them (else 404)."""
        image = self.get(image_id)
        if admin or image.owner in (CATALOG_OWNER, username):
            return image
        if self.shares.has("image", image_id, username):
            return image
        raise NotFound(f"no image {image_id!r}")

    def add(self, entry: NewImage) -> Image:
        """Upsert by image reference: the same reference keeps its id."""
        ref = ImageRef(image_id=f"ref:{entry.image}", target=new_id())
        try:
            self.images.put(ref.to_item(), condition="attribute_not_exists(image_id)")
        except ConditionFailed:
            stored = self.images.get({"image_id": ref.image_id})
            if stored:
                ref = ImageRef.from_item(stored)
        existing = _image(self.images.get({"image_id": ref.target}))
        image = Image(image_id=ref.target, owner=CATALOG_OWNER, name=entry.name,
                      image=entry.image, port=entry.port, cpu=entry.cpu,
                      memory_mb=entry.memory_mb, tags=entry.tags,
                      created_at=existing.created_at if existing else now_iso())
        self.images.put(image.to_item())
        return image

    def saved_put(self, instance: Instance, image: str, pushed: Reference | None,
                  size: int | None) -> dict[str, Any]:
        """The transaction entry that adds the image ``instance`` was saved as (same id);
        ``pushed``: its reference on the image server."""
        saved = Image(image_id=instance.instance_id, owner=instance.owner,
                      name=f"{instance.name} (saved)", image=image,
                      port=instance.port, cpu=instance.cpu, memory_mb=instance.memory_mb,
                      tags=["saved"], source_instance=instance.instance_id,
                      created_at=now_iso(),
                      repository=pushed.repository if pushed else None,
                      digest=pushed.digest if pushed else None, size=size)
        return self.images.put_op(saved.to_item())

    def remove(self, image_id: str, username: str, *, admin: bool) -> None:
        image = self.get_for(image_id, username, admin=admin)
        if image.in_catalog and not admin:
            raise Forbidden("only admins change the catalog")
        if image.owner not in (CATALOG_OWNER, username) and not admin:
            raise Forbidden("only the owner deletes a saved image")
        self.images.delete({"image_id": image.image_id})
        if image.in_catalog:
            # The reference may already point at a newer entry: leave that one.
            with contextlib.suppress(ConditionFailed):
                self.images.delete({"image_id": f"ref:{image.image}"},
                                   condition="target = :t", vals={":t": image.image_id})


def _image(item: Item | None) -> Image | None:
    """An image item as a record; None for no item and for the ``ref:`` items in the table."""
    return Image.from_item(item) if item and item.get("owner") and "name" in item else None


def _images(items: Iterable[Item]) -> list[Image]:
    return [image for image in map(_image, items) if image is not None]
