"""Grants (SharesTable): ``resource`` = ``instance:<id>`` or ``image:<id>``, ``grantee`` = username.

The ``by-grantee`` index answers "what is shared with me" with a Query. A share **link** of an
image is an item of the same resource with ``grantee = link:<link id>`` (usernames never hold a
``:``), the link's secret only as its SHA-256 and its ``expires_at`` (epoch seconds); a grant
made by redeeming a link records it in ``via``, so revoking the link revokes those grants too.
"""

from __future__ import annotations

from typing import Any

from control_plane.clock import now_iso
from control_plane.table import Item, Table

LINK = "link:"


class Shares:
    def __init__(self, table: Table) -> None:
        self.table = table

    def grant(self, kind: str, resource_id: str, grantee: str, by: str,
              via: str | None = None) -> None:
        item: dict[str, Any] = {"resource": f"{kind}:{resource_id}", "grantee": grantee,
                                "by": by, "created_at": now_iso()}
        if via is not None:
            item["via"] = via
        self.table.put(item)

    def revoke(self, kind: str, resource_id: str, grantee: str) -> bool:
        return self.table.delete({"resource": f"{kind}:{resource_id}", "grantee": grantee}) \
            is not None

    def has(self, kind: str, resource_id: str, grantee: str) -> bool:
        return self.table.get({"resource": f"{kind}:{resource_id}", "grantee": grantee},
                              consistent=False) is not None

    def _all(self, kind: str, resource_id: str) -> list[Item]:
        return list(self.table.query("#r = :r", names={"#r": "resource"},
                                     vals={":r": f"{kind}:{resource_id}"}))

    def grantees(self, kind: str, resource_id: str) -> list[str]:
        return [i["grantee"] for i in self._all(kind, resource_id)
                if not i["grantee"].startswith(LINK)]

    def shared_with(self, kind: str, grantee: str) -> list[str]:
        return [i["resource"].split(":", 1)[1] for i in self.table.query(
            "grantee = :g AND begins_with(#r, :p)", index="by-grantee",
            names={"#r": "resource"}, vals={":g": grantee, ":p": f"{kind}:"})]

    def remove_all(self, kind: str, resource_id: str) -> list[str]:
        """Every grant and link of the resource; returns the users who had access."""
        removed = []
        for item in self._all(kind, resource_id):
            self.revoke(kind, resource_id, item["grantee"])
            if not item["grantee"].startswith(LINK):
                removed.append(item["grantee"])
        return removed

    # --- links ------------------------------------------------------------------------

    def add_link(self, kind: str, resource_id: str, link_id: str, *, secret_sha256: str,
                 expires_at: int, by: str) -> None:
        self.table.put({"resource": f"{kind}:{resource_id}", "grantee": f"{LINK}{link_id}",
                        "secret_sha256": secret_sha256, "expires_at": expires_at, "by": by,
                        "created_at": now_iso()})

    def link(self, kind: str, resource_id: str, link_id: str) -> Item | None:
        return self.table.get({"resource": f"{kind}:{resource_id}",
                               "grantee": f"{LINK}{link_id}"})

    def links(self, kind: str, resource_id: str) -> list[Item]:
        return [i for i in self._all(kind, resource_id) if i["grantee"].startswith(LINK)]

    def revoke_link(self, kind: str, resource_id: str, link_id: str) -> list[str]:
        """Remove the link and the grants made through it; returns their users."""
        gone = []
        for item in self._all(kind, resource_id):
            if item["grantee"] == f"{LINK}{link_id}" or item.get("via") == link_id:
                self.revoke(kind, resource_id, item["grantee"])
                if item.get("via") == link_id:
                    gone.append(item["grantee"])
        return gone
