"""Deterministic provider simulator: a seeded DM world served over loopback HTTP with injectable faults."""

from dm_pipeline.simulator.faults import KINDS as FAULT_KINDS
from dm_pipeline.simulator.faults import Faults
from dm_pipeline.simulator.server import RequestInfo, Simulator
from dm_pipeline.simulator.world import SimEvent, World

__all__ = ["FAULT_KINDS", "Faults", "RequestInfo", "SimEvent", "Simulator", "World"]
