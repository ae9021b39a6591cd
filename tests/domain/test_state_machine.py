from __future__ import annotations

import itertools

import pytest

from kanalvaxel.domain.errors import IllegalTransitionError, KanalvaxelError
from kanalvaxel.domain.model import ShipmentState, check_transition

# Written from the meaning of each state, not copied from the model:
#   ACCEPTED     a worker claims it (SENDING), the decision itself says "wait for FaR" (RETRY_WAIT), or it
#                is given up before any attempt (FAILED).
#   SENDING      the worker may hand it to the next channel attempt (SENDING again, also when an expired
#                lease is claimed anew), wait (RETRY_WAIT), hand it over, see it confirmed at once, or fail.
#   RETRY_WAIT   a worker's claim (SENDING), another wait while FaR is still down (RETRY_WAIT), or giving
#                up (FAILED).
#   HANDED_OVER  the channel reports delivery, or failure: then the next channel (SENDING), a later
#                retry (RETRY_WAIT) or FAILED when none is left.
#   DELIVERED, FAILED  terminal.
EXPECTED = """
from \\ to    ACCEPTED SENDING RETRY_WAIT HANDED_OVER DELIVERED FAILED
ACCEPTED       -        x       x          -           -         x
SENDING        -        x       x          x           x         x
RETRY_WAIT     -        x       x          -           -         x
HANDED_OVER    -        x       x          -           x         x
DELIVERED      -        -       -          -           -         -
FAILED         -        -       -          -           -         -
"""


def expected_table() -> dict[tuple[ShipmentState, ShipmentState], bool]:
    header, *rows = [line.split() for line in EXPECTED.strip().splitlines()]
    targets = [ShipmentState(name) for name in header[3:]]
    table = {}
    for row in rows:
        source = ShipmentState(row[0])
        for target, mark in zip(targets, row[1:], strict=True):
            table[source, target] = mark == "x"
    return table


TABLE = expected_table()


def test_table_covers_every_pair() -> None:
    assert set(TABLE) == set(itertools.product(ShipmentState, ShipmentState))


@pytest.mark.parametrize(("current", "new"), sorted(TABLE))
def test_transition(current: ShipmentState, new: ShipmentState) -> None:
    if TABLE[current, new]:
        check_transition(current, new)
    else:
        with pytest.raises(IllegalTransitionError) as info:
            check_transition(current, new)
        assert str(info.value) == f"{current.value} -> {new.value} is not allowed"
        assert isinstance(info.value, KanalvaxelError)


@pytest.mark.parametrize("state", list(ShipmentState))
def test_terminal_states_have_no_exits(state: ShipmentState) -> None:
    assert state.terminal == (state in {ShipmentState.DELIVERED, ShipmentState.FAILED})
    if state.terminal:
        for new in ShipmentState:
            with pytest.raises(IllegalTransitionError):
                check_transition(state, new)
    else:
        assert any(TABLE[state, new] for new in ShipmentState)
        assert TABLE[state, ShipmentState.FAILED], "every live shipment can be given up"


def test_every_live_state_can_reach_a_terminal_state() -> None:
    reachable = {ShipmentState.ACCEPTED}
    frontier = [ShipmentState.ACCEPTED]
    while frontier:
        state = frontier.pop()
        for new in ShipmentState:
            if TABLE[state, new] and new not in reachable:
                reachable.add(new)
                frontier.append(new)
    assert reachable == set(ShipmentState)


def test_stored_values_never_change() -> None:
    assert [s.value for s in ShipmentState] == [
        "ACCEPTED",
        "SENDING",
        "RETRY_WAIT",
        "HANDED_OVER",
        "DELIVERED",
        "FAILED",
    ]
