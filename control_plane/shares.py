"""Grants (SharesTable): ``resource`` = ``instance:<id>`` or ``image:<id>``, ``grantee`` = username.

The ``by-grantee`` index answers "what is shared with me" with a Query.
"""

from __future__ import annotations

from control_plane.clock import now_iso
from control_plane.table import Table


class Shares:
    def __init__(self, table: Table) -> None:
        self.table = table

    def grant(self, kind: str, resource_id: str, grantee: str, by: str) -> None:
        self.table.put({"resource": f"{kind}:{resource_id}", "grantee": grantee, "by": by,
                        "created_at": now_iso()})

    def revoke(self, kind: str, resource_id: str, grantee: str) -> bool:
        return self.table.delete({"resource": f"{kind}:{resource_id}", "grantee": grantee}) \
            is not None

    def has(self, kind: str, resource_id: str, grantee: str) -> bool:
        return self.table.get({"resource": f"{kind}:{resource_id}", "grantee": grantee},
                              consistent=False) is not None

    def grantees(self, kind: str, resource_id: str) -> list[str]:
        return [i["grantee"] for i in self.table.query(
            "#r = :r", names={"#r": "resource"}, vals={":r": f"{kind}:{resource_id}"})]

    def shared_with(self, kind: str, grantee: str) -> list[str]:
        return [i["resource"].split(":", 1)[1] for i in self.table.query(
            "grantee = :g AND begins_with(#r, :p)", index="by-grantee",
            names={"#r": "resource"}, vals={":g": grantee, ":p": f"{kind}:"})]

    def remove_all(self, kind: str, resource_id: str) -> list[str]:
        removed = self.grantees(kind, resource_id)
        for grantee in removed:
            self.revoke(kind, resource_id, grantee)
        return removed
