"""`python -m services.common.healthcheck HOST:PORT [--timeout S]`: exit 0 iff SERVING.

For container healthchecks and scripts: asks the standard gRPC health service.
"""

from __future__ import annotations

import argparse
import sys

from services.common.client import wait_until_serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("address", help="host:port of a gRPC server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for SERVING")
    parser.add_argument("--service", default="", help="service name to check (default: the whole server)")
    args = parser.parse_args(argv)
    try:
        wait_until_serving(args.address, args.timeout, args.service)
    except (TimeoutError, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
