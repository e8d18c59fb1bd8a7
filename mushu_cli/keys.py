"""``mushu keys init DIR`` and ``mushu keys add NAME DIR``: CURVE keys for a lab (docs/security.md)."""

from __future__ import annotations

import os
import sys

from mushu_core import security

NAME = "keys"
HELP = "make CURVE keys: the services' pair and the clients' certificates"


def add_arguments(p):
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="make a key directory: the services' pair and one client per role "
                          f"({', '.join(security.ROLES)})")
    init.add_argument("directory", help="the key directory to make (give it to the services as MUSHU_KEYS)")
    add = sub.add_parser("add", help="make one more client and list it with its role")
    add.add_argument("name", help="the client's name (letters, digits, '-', '_', '.')")
    add.add_argument("directory", help="the key directory 'mushu keys init' made")
    add.add_argument("--role", choices=security.ROLES, default="viewer", help="what the client may do "
                     "(default viewer: read only)")


def run(args) -> int:
    try:
        if args.keys_command == "init":
            clients = security.init_directory(args.directory)
            print(f"services' keys in {args.directory}: set MUSHU_KEYS={os.path.abspath(args.directory)} for "
                  "the services (keep it on their hosts; it holds their secret key)")
        else:
            clients = [security.add_client(args.directory, args.name, args.role)]
    except (OSError, ValueError) as exc:
        print(f"mushu keys: {exc}", file=sys.stderr)
        return 1
    for client in clients:
        print(f"client {os.path.basename(client)}: copy {client} to its PC and set MUSHU_KEYS to it")
    return 0
