"""Operator commands against a deployment (environment as for the Lambda functions).

    python -m control_plane keys list            the published kids, newest (signing) last
    python -m control_plane keys rotate          add a signing key; the old ones stay published
    python -m control_plane keys retire KID      stop publishing an old key
"""

from __future__ import annotations

import sys

from control_plane import services


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "keys" or argv[1] not in ("list", "rotate", "retire"):
        print(__doc__, file=sys.stderr)
        return 2
    keys = services.current().keys
    if argv[1] == "rotate":
        print(keys.rotate().kid)
    elif argv[1] == "retire":
        if len(argv) != 3:
            print("usage: python -m control_plane keys retire KID", file=sys.stderr)
            return 2
        keys.retire(argv[2])
    for published in keys.jwks()["keys"]:
        print(published["kid"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
