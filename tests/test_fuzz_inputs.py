"""Fuzzing the input parsers (few examples here; ``bench/fuzz.py --examples 20000`` runs the
same properties long): the provisioning file reader, times and durations, labels. Whatever
the input, a value or a documented :class:`~fleet.errors.FleetError`, never another exception.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers.fuzz import KNOWN, PROPERTIES
from hypothesis import HealthCheck, given, settings

EXAMPLES = 50


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_inputs_that_once_got_through(name: str) -> None:
    _, check = PROPERTIES[name]
    for value in KNOWN[name]:
        check(value)


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_parser_raises_only_documented_errors(name: str) -> None:
    strategy, check = PROPERTIES[name]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def run(value: Any) -> None:
        check(value)

    run()
