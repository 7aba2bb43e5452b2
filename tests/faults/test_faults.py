"""
Every fault of issue 5, against a real engine: the daemon never notices, and the remote converges.

For each misbehaving remote: ``update()`` stays under 1 ms at p99 and never
raises, ``submitted == delivered + failed + dropped + superseded + pending``
at every sample, the fault is logged without the token, and once the remote
is healthy again it holds every server's latest status (resync). No
``lightd-sync`` thread outlives ``close()``.
"""

from __future__ import annotations

import logging

import pytest

from lightd_sync import SyncEngine

from ..conftest import LogCapture
from .conftest import Fault
from .harness import check_latency, fault_config, ride_out

pytestmark = pytest.mark.timeout(20)

FAULTS = [
    "refused",
    "never_answers",
    "slow",
    "status_500",
    "status_502",
    "status_503",
    "status_429",
    "status_401",
    "cut",
    "garbage",
    "flapping",
]


def engine_for(url: str, **kw: object) -> SyncEngine:
    return SyncEngine(fault_config(url, **kw))  # testing mode: retries do not wait


@pytest.mark.parametrize("name", FAULTS)
def test_engine_rides_out_the_fault(
    name: str, request: pytest.FixtureRequest, logs: LogCapture
) -> None:
    fault: Fault = request.getfixturevalue(name)
    outcome = ride_out(engine_for(fault.server.url), fault, logs)
    check_latency(outcome, name)
    errors = logs.messages(logging.ERROR)
    assert any("unhealthy" in m for m in errors), f"{name}: the outage was not logged"
    if name == "flapping":
        recoveries = [m for m in logs.messages() if "healthy again" in m]
        assert fault.server.outages >= 2, "the remote went down more than once"
        assert len(recoveries) >= 2, f"the engine saw it come back more than once: {recoveries}"


@pytest.mark.parametrize("name", ["untrusted_tls", "wrong_host_tls"])
def test_engine_rides_out_a_tls_fault(
    name: str, request: pytest.FixtureRequest, ca_bundle: str, logs: LogCapture
) -> None:
    """A remote whose certificate fails verification counts as unreachable until it is fixed."""
    fault: Fault = request.getfixturevalue(name)
    engine = engine_for(fault.server.url, ca_bundle=ca_bundle)
    outcome = ride_out(engine, fault, logs)
    check_latency(outcome, name)
    assert any("TLS failed" in m for m in logs.messages(logging.ERROR)), logs.text()


def test_a_silent_remote_is_logged_as_a_timeout(never_answers: Fault, logs: LogCapture) -> None:
    outcome = ride_out(engine_for(never_answers.server.url), never_answers, logs)
    assert outcome.final is not None
    assert any("no answer within 0.2 s" in m for m in logs.messages(logging.ERROR))


def test_a_rejected_token_is_logged_with_the_hint(status_401: Fault, logs: LogCapture) -> None:
    ride_out(engine_for(status_401.server.url), status_401, logs)
    assert any("tokens match on both sides" in m for m in logs.messages(logging.ERROR))
