"""``python -m meter server|agent [options]``: the processes beside Ray.

The same as ``python -m meter.server`` and ``python -m meter.agent``; kept because
``make run`` and the docs use it.
"""

from __future__ import annotations

import sys

from meter import agent, server


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("server", "agent"):
        print("usage: python -m meter {server,agent} [options]", file=sys.stderr)
        return 2
    role_main = server.main if args[0] == "server" else agent.main
    return role_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
