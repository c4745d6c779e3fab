"""Fixtures of the fault suite (issue 9); the harness itself is in harness.py."""

import pytest

from tests.faults.harness import SIM_LATENCY, SUMMARIES, Stack, sim_config


@pytest.fixture(scope="package")
def fault_stack(sim_url, s3_endpoint, django_db_setup):
    """Up while this package's tests run, and only then: its sweeper must not re-send other tests' jobs."""
    stack = Stack(sim_url, s3_endpoint)
    yield stack
    stack.close()


@pytest.fixture
def stack(fault_stack, transactional_db, sim):
    """The stack, ready, for a scenario whose rows the worker must see (committed), with apisim reset and
    answering every call in SIM_LATENCY seconds, with no limit of its own."""
    sim.reset()
    sim_config(sim, max_concurrent=0, latency=SIM_LATENCY)
    fault_stack.ready()
    return fault_stack


def pytest_terminal_summary(terminalreporter):
    if SUMMARIES:
        terminalreporter.section("fault suite (issue 9)")
        for line in SUMMARIES:
            terminalreporter.write_line(line)


