"""One table over every benchmark result: what was compared, baseline, candidate, ratio, machine.

    python -m bench.summary            # markdown table of bench/results/*.json (the README's)

Fails when a result lacks one of the fields every benchmark must write.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.machine import RESULTS

REQUIRED = ("baseline", "candidate", "ratio", "machine")
ORDER = ("generation", "push", "reward", "step", "scaling", "soak", "load", "learning")


def headline(value) -> str:
    """The number a reader compares: the first of the usual throughput/time keys, else the value itself."""
    if not isinstance(value, dict):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    for key, unit in (
        ("tokens_per_s", "tok/s"),
        ("output_token_throughput", "tok/s"),
        ("pairs_per_s", "pairs/s"),
        ("seconds", "s"),
        ("step_s", "s/step"),
        ("success_share", "succeeded"),
        ("reward", "reward"),
    ):
        if key in value and isinstance(value[key], (int, float)):
            return f"{value[key]:.4g} {unit}"
    return "see JSON"


def format_ratio(ratio: float | dict | None) -> str:
    """One ratio, or several named ones (a benchmark that compares on more than one axis)."""
    if isinstance(ratio, dict):
        return ", ".join(f"{name} {format_ratio(value)}" for name, value in ratio.items())
    return str(ratio) if ratio is None else f"{ratio:.3g}"


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__.splitlines()[0]).parse_args(argv)
    rows, problems = [], []
    names = sorted(
        (p.stem for p in RESULTS.glob("*.json")), key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)
    )
    for name in names:
        result = json.loads((RESULTS / f"{name}.json").read_text())
        missing = [key for key in REQUIRED if key not in result]
        if "baseline" not in result and "candidate" not in result:
            print(f"bench.summary: {name}.json is not a baseline/candidate comparison (skipped)", file=sys.stderr)
            continue
        if missing:
            problems.append(f"{name}.json lacks {missing}")
            continue
        machine = result["machine"]
        where = f"{machine.get('cores')} cores" + (f", {machine['gpu']}" if machine.get("gpu") else ", no GPU")
        compared = result.get("compared") or result.get("ratio_meaning", "")
        ratio = result["ratio"]
        rows.append(
            f"| {name} | {compared} | {headline(result['baseline'])} | {headline(result['candidate'])} | "
            f"{format_ratio(ratio)} | {where} |"
        )
    print("| benchmark | compared | baseline | candidate | ratio | machine |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    for problem in problems:
        print(f"bench.summary: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
