"""Images (ImagesTable): the public catalog, users' saved images, and images shared with them.

Catalog entries have ``owner = "_catalog"``; a saved image has its user as owner. Listing is three
queries (catalog, own, shared via SharesTable's ``by-grantee`` index) plus one BatchGetItem: no
Scan. Catalog entries are upserted by image reference (bootstrap) through a second item
``ref:<image reference>`` that holds the entry's id, so two writers cannot make duplicates.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from control_plane import validate
from control_plane.clock import now_iso
from control_plane.errors import Forbidden, NotFound
from control_plane.shares import Shares
from control_plane.table import ConditionFailed, Item, Table

CATALOG_OWNER = "_catalog"
DEFAULT_CPU = 1.0
DEFAULT_MEMORY_MB = 1024


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    """What an admin (or the local bootstrap) puts in the catalog."""

    name: str
    image: str
    port: int
    cpu: float = DEFAULT_CPU
    memory_mb: int = DEFAULT_MEMORY_MB
    tags: list[str] = field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> CatalogEntry:
        return cls(
            name=validate.string(body, "name", max_len=100),
            image=validate.image_ref(body),
            port=validate.integer(body, "port", low=1, high=65535),
            cpu=validate.number(body, "cpu", default=DEFAULT_CPU),
            memory_mb=validate.integer(body, "memory_mb", default=DEFAULT_MEMORY_MB, low=16,
                                       high=validate.MAX_MEMORY_MB),
            tags=validate.string_list(body, "tags"),
        )


def image_json(item: Item) -> dict[str, Any]:
    return {
        "id": item["image_id"],
        "name": item["name"],
        "image": item["image"],
        "port": item["port"],
        "cpu": item["cpu"],
        "memory_mb": item["memory_mb"],
        "tags": item.get("tags", []),
        "kind": "catalog" if item["owner"] == CATALOG_OWNER else "saved",
        "owner": None if item["owner"] == CATALOG_OWNER else item["owner"],
        "created_at": item["created_at"],
    }


class Catalog:
    def __init__(self, images: Table, shares: Shares) -> None:
        self.images = images
        self.shares = shares

    def list_for(self, username: str) -> list[dict[str, Any]]:
        items = self.owned_by(CATALOG_OWNER) + self.owned_by(username)
        seen = {i["image_id"] for i in items}
        items += self.shared_with(username, skip=seen)
        return [image_json(i) for i in items if i.get("owner") and "name" in i]

    def owned_by(self, owner: str) -> list[Item]:
        """The catalog (``CATALOG_OWNER``) or a user's saved images: one Query."""
        return list(self.images.query("#o = :o", index="by-owner", names={"#o": "owner"},
                                      vals={":o": owner}))

    def shared_with(self, username: str, skip: set[str] | frozenset[str] = frozenset()
                    ) -> list[Item]:
        """Images shared with the user (one Query and one BatchGetItem)."""
        wanted = [{"image_id": i} for i in self.shares.shared_with("image", username)
                  if i not in skip]
        return list(self.images.batch_get(wanted)) if wanted else []

    def get(self, image_id: str) -> Item:
        item = self.images.get({"image_id": validate.ident(image_id, "image")})
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

    def add(self, entry: CatalogEntry) -> dict[str, Any]:
        """Upsert by image reference: the same reference keeps its id."""
        new_id = secrets.token_hex(8)
        ref_key = {"image_id": f"ref:{entry.image}"}
        try:
            self.images.put({**ref_key, "target": new_id},
                            condition="attribute_not_exists(image_id)")
            image_id = new_id
        except ConditionFailed:
            ref = self.images.get(ref_key)
            image_id = ref["target"] if ref else new_id
        item = {"image_id": image_id, "owner": CATALOG_OWNER, "name": entry.name,
                "image": entry.image, "port": entry.port, "cpu": entry.cpu,
                "memory_mb": entry.memory_mb, "tags": entry.tags}
        existing = self.images.get({"image_id": image_id})
        item["created_at"] = existing["created_at"] if existing else now_iso()
        self.images.put(item)
        return image_json(item)

    def add_saved(self, *, owner: str, name: str, image: str, port: int, cpu: float,
                  memory_mb: int, source_instance: str) -> dict[str, Any]:
        item = {"image_id": secrets.token_hex(8), "owner": owner, "name": name, "image": image,
                "port": port, "cpu": cpu, "memory_mb": memory_mb, "tags": ["saved"],
                "source_instance": source_instance, "created_at": now_iso()}
        self.images.put(item)
        return image_json(item)

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
