"""Fuzz fleet's input parsers for a long while: the properties tests/test_fuzz_inputs.py runs
with a few examples (tests/helpers/fuzz.py), here with many.

Each property feeds generated input to a parser (the CSV and JSON Lines provisioning reader,
times and durations, labels) and fails on any exception other than fleet's documented
errors; hypothesis then shrinks the input and prints it.

Usage: python bench/fuzz.py [--examples 20000] [--only csv,jsonl,timestamp,label]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers.fuzz import PROPERTIES  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402


def run_property(name: str, examples: int) -> float:
    """Run one property with ``examples`` inputs; returns the seconds it took."""
    strategy, check = PROPERTIES[name]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value: Any) -> None:
        check(value)

    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="inputs per property")
    parser.add_argument("--only", default=",".join(PROPERTIES), help="comma-separated names")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in PROPERTIES]
    if unknown:
        parser.error(f"unknown properties {unknown}; known: {', '.join(PROPERTIES)}")
    for name in names:
        seconds = run_property(name, args.examples)
        print(f"{name:10} {args.examples} examples ok in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
