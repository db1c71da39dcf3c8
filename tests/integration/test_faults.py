"""The fault suite (issue 15): the local stack SIGKILLed at random points, N cycles.

Each cycle a user acts through the portal (launch, stop, save, discard, delete, a new user),
then the stack, the node daemon, the edge router or all three are killed while that is under
way, and restarted (:mod:`tests.support.faults`). Afterwards: 0 acknowledged writes lost, 0 pods
without a live instance after the grace period, 0 instances stuck in a transitional state past
their timeout, and every instance that was running and not changed reachable by its owner again
within 30 s. The counts are printed (``-s``) and the table is in docs/local-stack.md.

Marked ``faults`` (run by ``make test``; ``-m 'not faults'`` leaves it out). More cycles:
``DIT4C_FAULT_CYCLES=200`` or ``python -m bench.fault_soak``.
"""

from __future__ import annotations

import os

import pytest

from tests.support.faults import FaultRun, fault_env, run_cycles
from tests.support.local_stack import stack_settings

pytestmark = [pytest.mark.docker, pytest.mark.faults]

CYCLES = int(os.environ.get("DIT4C_FAULT_CYCLES", "50"))
SEED = int(os.environ.get("DIT4C_FAULT_SEED", "15"))


@pytest.fixture
def settings(tmp_path, unique_name, run_labels, tool_image, helpers_image) -> dict[str, str]:
    return fault_env(stack_settings(tmp_path / "data", unique_name("pods"), run_labels,
                                    helpers_image))


@pytest.mark.timeout(1200)
def test_killed_at_random_points_the_stack_loses_nothing_and_leaves_nothing_running(
    settings, docker_client, capsys
):
    env = settings
    run = FaultRun(env, docker_client, seed=SEED)
    try:
        counts = run_cycles(run, CYCLES)
    finally:
        run.close()
    with capsys.disabled():
        print(f"\nfault suite, seed {SEED}:\n{counts}")
    assert counts.cycles >= CYCLES
    assert counts.lost == []
    assert counts.orphan_pods == []
    assert counts.stuck == []
    assert counts.late == []
