"""Fuzz profile and CSR loading for as long as you like.

Runs the properties of ``tests/test_profiles.py`` (strategies and checks in
``tests/helpers/fuzz_pki.py``) with many more examples:

- profiles of arbitrary TOML values, near-valid profiles and arbitrary file contents load or
  are refused with InvalidInput, never another exception;
- every profile the loader accepts yields certificates (EC and RSA where its key usages
  allow) that pkilint passes at NOTICE (slow: two pkilint runs an example);
- random bytes, mutated DER/PEM CSRs and mutated-then-re-signed CSRs load or are refused with
  InvalidInput.

A failure stops the run and prints hypothesis's smallest failing example.

Usage: python bench/fuzz_pki.py [--examples 2000] [--lint-examples 200] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))

from helpers.fuzz_pki import (  # noqa: E402
    check_csr_bytes,
    check_profile_file,
    check_profile_issues_clean,
    device_ids,
    garbage_profiles,
    make_issuer,
    mutate,
    plausible_profiles,
    profile_toml,
    sample_csrs,
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def properties(examples: int, lint_examples: int) -> dict[str, Callable[[], None]]:
    """Each property as a function that runs it ``examples`` times."""
    tmp = Path(tempfile.mkdtemp(prefix="fleet-fuzz-pki-"))
    issuer = make_issuer(tmp / "ca")
    csrs = sample_csrs()

    def run(count: int) -> Any:
        return settings(
            max_examples=count,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )

    @run(examples)
    @given(raw=garbage_profiles | plausible_profiles, device_id=device_ids)
    def profile_values(raw: dict[str, Any], device_id: str) -> None:
        with tempfile.TemporaryDirectory() as home:
            check_profile_file(Path(home), profile_toml(raw), device_id)

    @run(examples)
    @given(data=st.binary(max_size=2000) | st.text(max_size=2000))
    def profile_files(data: bytes | str) -> None:
        with tempfile.TemporaryDirectory() as home:
            check_profile_file(Path(home), data)

    @run(lint_examples)
    @given(raw=plausible_profiles, device_id=device_ids)
    def profile_lint(raw: dict[str, Any], device_id: str) -> None:
        with tempfile.TemporaryDirectory() as home:
            check_profile_issues_clean(issuer, Path(home), raw, device_id)

    @run(examples)
    @given(data=st.binary(max_size=4000))
    def csr_bytes(data: bytes) -> None:
        check_csr_bytes(data)
        check_csr_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\n" + data)

    @run(examples)
    @given(
        which=st.integers(0, len(csrs.encodings) - 1),
        seed=st.integers(0, 2**32),
        edits=st.integers(1, 8),
    )
    def csr_mutated(which: int, seed: int, edits: int) -> None:
        check_csr_bytes(mutate(csrs.encodings[which], seed, edits))

    @run(examples)
    @given(seed=st.integers(0, 2**32), edits=st.integers(1, 6))
    def csr_resigned(seed: int, edits: int) -> None:
        check_csr_bytes(csrs.resigned(mutate(csrs.info, seed, edits)))

    return {
        "profile-values": profile_values,
        "profile-files": profile_files,
        "profile-lint": profile_lint,
        "csr-bytes": csr_bytes,
        "csr-mutated": csr_mutated,
        "csr-resigned": csr_resigned,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per property")
    parser.add_argument(
        "--lint-examples", type=int, default=None, help="for profile-lint (default examples/10)"
    )
    parser.add_argument("--only", nargs="+", help="run only these properties")
    args = parser.parse_args()
    lint = args.lint_examples if args.lint_examples is not None else max(1, args.examples // 10)
    chosen = properties(args.examples, lint)
    for name in args.only or list(chosen):
        if name not in chosen:
            parser.error(f"unknown property {name!r}; choose from {', '.join(chosen)}")
        start = time.perf_counter()
        chosen[name]()
        count = lint if name == "profile-lint" else args.examples
        print(f"{name:<16} {count:>7} examples  ok  {time.perf_counter() - start:7.1f} s")


if __name__ == "__main__":
    main()
