"""Images (ImagesTable): the public catalog, users' saved images, and images shared with them.

Catalog entries have ``owner = "_catalog"``; a saved image has its user as owner. Listing is three
queries (catalog, own, shared via SharesTable's ``by-grantee`` index) plus one BatchGetItem: no
Scan. Catalog entries are upserted by image reference (bootstrap) through a second item
``ref:<image reference>`` that holds the entry's id, so two writers cannot make duplicates.
"""

from __future__ import annotations

import contextlib

from control_plane.bodies import NewImage
from control_plane.clock import now_iso
from control_plane.errors import Forbidden, NotFound
from control_plane.shares import Shares
from control_plane.table import ConditionFailed, Item, Table
from protocol.ids import is_id, new_id

CATALOG_OWNER = "_catalog"


class Catalog:
    def __init__(self, images: Table, shares: Shares) -> None:
        self.images = images
        self.shares = shares

    def list_for(self, username: str) -> list[Item]:
        items = list(self.images.query("#o = :o", index="by-owner", names={"#o": "owner"},
                                       vals={":o": CATALOG_OWNER}))
        items += self.images.query("#o = :o", index="by-owner", names={"#o": "owner"},
                                   vals={":o": username})
        shared = self.shares.shared_with("image", username)
        seen = {i["image_id"] for i in items}
        wanted = [{"image_id": i} for i in shared if i not in seen]
        if wanted:
            items += self.images.batch_get(wanted)
        return [i for i in items if i.get("owner") and "name" in i]

    def get(self, image_id: str) -> Item:
        item = self.images.get({"image_id": image_id}) if is_id(image_id) else None
        if item is None or "name" not in item:
            raise NotFound(f"no image {image_id!r}")
        return item

    def get_for(self, image_id: str, username: str, *, admin: bool) -> Item:
        """An image the user may launch: catalog, own, shared with them (else 404)."""
        item = self.get(image_id)
        if admin or item["owner"] in (CATALOG_OWNER, username):
            return item
        if self.shares.has("image", image_id, username):
            return item
        raise NotFound(f"no image {image_id!r}")

    def add(self, entry: NewImage) -> Item:
        """Upsert by image reference: the same reference keeps its id."""
        fresh = new_id()
        ref_key = {"image_id": f"ref:{entry.image}"}
        try:
            self.images.put({**ref_key, "target": fresh},
                            condition="attribute_not_exists(image_id)")
            image_id = fresh
        except ConditionFailed:
            ref = self.images.get(ref_key)
            image_id = ref["target"] if ref else fresh
        item = {"image_id": image_id, "owner": CATALOG_OWNER, "name": entry.name,
                "image": entry.image, "port": entry.port, "cpu": entry.cpu,
                "memory_mb": entry.memory_mb, "tags": entry.tags}
        existing = self.images.get({"image_id": image_id})
        item["created_at"] = existing["created_at"] if existing else now_iso()
        self.images.put(item)
        return item

    def remove(self, image_id: str, username: str, *, admin: bool) -> None:
        item = self.get_for(image_id, username, admin=admin)
        if item["owner"] == CATALOG_OWNER and not admin:
            raise Forbidden("only admins change the catalog")
        if item["owner"] not in (CATALOG_OWNER, username) and not admin:
            raise Forbidden("only the owner deletes a saved image")
        self.images.delete({"image_id": item["image_id"]})
        if item["owner"] == CATALOG_OWNER:
            # The reference may already point at a newer entry: leave that one.
            with contextlib.suppress(ConditionFailed):
                self.images.delete({"image_id": f"ref:{item['image']}"},
                                   condition="target = :t", vals={":t": item["image_id"]})
