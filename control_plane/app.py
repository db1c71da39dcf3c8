"""The Chalice app: HTTP routes mapped to domain calls, nothing more."""

from __future__ import annotations

from typing import Any

from chalice.app import Chalice

app = Chalice(app_name="dit4c")


@app.route("/api/health")
def health() -> dict[str, Any]:
    return {"status": "ok"}
