"""Fixtures of the gRPC tests; what they build is in ``fleet_harness``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_harness import Fleet, FleetFactory, Pki, fleet_factory, make_pki


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[FleetFactory]:
    yield from fleet_factory(tmp_path)


@pytest.fixture
def fleet(make_fleet: FleetFactory) -> Fleet:
    return make_fleet()


@pytest.fixture(scope="session")
def pki() -> Pki:
    return make_pki()
