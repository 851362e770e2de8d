"""`python -m services.loadtest {policy,reward} --target HOST:PORT [...]`: load a service, print the report.

Examples:
  python -m services.loadtest policy --target 127.0.0.1:50051 --concurrency 8 --duration-s 60
  python -m services.loadtest policy --target 127.0.0.1:50051 --request-rate 4 --burstiness 0.5 \\
      --max-concurrency 32 --goodput ttft:500,tpot:50 --output-json run.json
  python -m services.loadtest reward --target 127.0.0.1:50052 --sweep-concurrency 1,4,16 \\
      --output-json sweep.json --output-png sweep.png
"""

from __future__ import annotations

import asyncio
import logging
import sys

from services.common.config import load_config
from services.common.server import setup_logging
from services.loadtest.config import LoadTestConfig
from services.loadtest.driver import SERVICES, run_load_test, sweep_of
from services.loadtest.plot import plot_sweep
from services.loadtest.report import format_report, format_sweep, write_json
from services.loadtest.summary import parse_percentiles

log = logging.getLogger("services.loadtest")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SERVICES:
        asked = bool(argv) and argv[0] in ("-h", "--help")  # asked for help: stdout and success, like argparse
        out = sys.stdout if asked else sys.stderr
        print(f"usage: python -m services.loadtest {{{','.join(SERVICES)}}} [flags]\n", file=out)
        print(__doc__.strip(), file=out)
        print(f"\nfirst argument: the service to load ({', '.join(SERVICES)}); then --help for its settings", file=out)
        return 0 if asked else 2
    service = argv[0]
    config = load_config(
        LoadTestConfig, argv[1:], env_prefix="RLHF_LOADTEST_", prog=f"python -m services.loadtest {service}"
    )
    setup_logging(config.log_level)
    try:
        sweep = sweep_of(config)
        levels = asyncio.run(run_load_test(service, config, sweep.shapes))
    except (ValueError, ConnectionError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    percentiles = parse_percentiles(config.percentiles)
    for level in levels:
        print(format_report(level, percentiles, title=f" {service} {level['rpc']} {level['load']['label']} "))
    if len(levels) > 1:
        print(format_sweep(levels))
    if config.output_json:
        payload = levels[0] if len(levels) == 1 else {"service": service, "sweep": sweep.x_key, "levels": levels}
        print(f"report: {write_json(config.output_json, payload)}")
    if config.output_png:
        if len(levels) < 2:
            print("loadtest: --output-png needs a sweep (--sweep-concurrency or --sweep-rates)", file=sys.stderr)
            return 2
        title = f"{service} {levels[0]['rpc']} at {config.target}"
        print(f"plot: {plot_sweep(levels, sweep.x_key, sweep.x_label, config.output_png, title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
