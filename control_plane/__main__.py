"""Operator commands against a deployment.

    python -m control_plane bootstrap (--stack NAME | --function NAME) [--region REGION]
        make a fresh deployment usable: the admin account, the default cluster, the demo
        catalog, the signing key; prints the portal URL and the first node's join command.
        The admin password comes from $DIT4C_ADMIN_PASSWORD or standard input, never argv.
    python -m control_plane keys list            the published kids, newest (signing) last
    python -m control_plane keys rotate          add a signing key; the old ones stay published
    python -m control_plane keys retire KID      stop publishing an old key

``keys`` reads its settings from the environment (as the Lambda functions do); ``bootstrap``
reads them from the deployed API function (:mod:`control_plane.deployment`). AWS credentials
come from boto3's usual chain. Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from control_plane import deployment, services
from control_plane.bootstrap import bootstrap as run
from control_plane.config import Config
from control_plane.errors import ControlPlaneError
from control_plane.services import Services


def _password() -> str:
    given = os.environ.get("DIT4C_ADMIN_PASSWORD")
    if given:
        return given
    if sys.stdin.isatty():
        first = getpass.getpass("admin password: ")
        if getpass.getpass("again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def bootstrap(args: argparse.Namespace) -> int:
    try:
        password = _password()
        function = args.function or deployment.function_of_stack(args.stack, args.region)
        config = Config.from_env(deployment.function_environment(function, args.region))
        done = run(Services.build(config), password)
    except NoRegionError:
        print("bootstrap: no AWS region: pass --region or set AWS_DEFAULT_REGION",
              file=sys.stderr)
        return 1
    except (ValueError, deployment.DeploymentError, BotoCoreError) as exc:
        print(f"bootstrap: {exc}", file=sys.stderr)
        return 1
    except ControlPlaneError as exc:
        print(f"bootstrap: {exc.message}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"bootstrap: missing permission or resource: "
              f"{deployment.describe_client_error(exc)}", file=sys.stderr)
        return 1
    print(f"dit4c is ready\n"
          f"  portal:     {done.portal_url}\n"
          f"  login:      admin (the password you gave)\n"
          f"  first node: on the node (one-time token, valid "
          f"{config.join_token_seconds // 3600} h), run\n"
          f"    python -m node_daemon join --portal {done.portal_url} --token {done.join_token}\n"
          f"    python -m node_daemon run")
    return 0


def keys(args: argparse.Namespace) -> int:
    store = services.current().keys
    if args.action == "rotate":
        print(store.rotate().kid)
    elif args.action == "retire":
        if not args.kid:
            print("usage: python -m control_plane keys retire KID", file=sys.stderr)
            return 2
        store.retire(args.kid)
    for published in store.jwks()["keys"]:
        print(published["kid"])
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m control_plane", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    boot = commands.add_parser("bootstrap", help="make a fresh deployment usable")
    where = boot.add_mutually_exclusive_group(required=True)
    where.add_argument("--stack", help="the SAM/CloudFormation stack's name")
    where.add_argument("--function", help="the API function's name (Terraform output "
                                          "api_function_name)")
    boot.add_argument("--region", help="default: boto3's (AWS_REGION, the profile)")
    key = commands.add_parser("keys", help="list, rotate or retire signing keys")
    key.add_argument("action", choices=["list", "rotate", "retire"])
    key.add_argument("kid", nargs="?")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage
        return int(exc.code or 0)
    return bootstrap(args) if args.command == "bootstrap" else keys(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
