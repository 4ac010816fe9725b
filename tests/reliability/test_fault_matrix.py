"""Every simulator fault x provider ends in its documented outcome (see fault_matrix.py)."""

from __future__ import annotations

import pytest

from tests.reliability import results
from tests.reliability.fault_matrix import cells, run_cell

CELLS = cells()


@pytest.fixture
def fm_sim():  # type: ignore[no-untyped-def]
    from dm_pipeline.simulator import Simulator, World

    with Simulator(World(seed=3, history_days=25), rate_limit=100_000, oauth_client_id="fm-client") as sim:
        yield sim


@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
def test_fault_cell(cell, engine, fm_sim) -> None:  # type: ignore[no-untyped-def]
    observed = run_cell(cell, engine, fm_sim, {})
    results.record("fault", cell.name, cell.expect == observed.outcome,
                   f"expected {cell.expect}, got {observed.outcome} ({observed.detail})")
    assert observed.outcome == cell.expect, observed.detail
