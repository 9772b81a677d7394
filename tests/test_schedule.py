"""The worker's schedule: one place per call, never later, never twice at once."""

from __future__ import annotations

from archiver.schedule import Schedule


async def test_due_calls_come_out_earliest_first_and_once() -> None:
    s = Schedule()
    s.add("b", 0.0)
    s.add("a", -1.0)
    s.add("later", 3600)
    assert s.take()[0] == "a" and s.take()[0] == "b"
    sid, wait = s.take()
    assert sid is None and 3500 < wait <= 3600
    assert s.in_flight == {"a", "b"} and "a" in s and s.waiting == 1


async def test_adding_again_never_moves_a_call_later_and_ignores_one_in_flight() -> None:
    s = Schedule()
    s.add("x", 0.0)
    s.add("x", 3600)  # a second source reports it: it stays due now
    assert s.take()[0] == "x"
    s.add("x", 0.0)  # in flight: not handed to a second worker
    assert s.take()[0] is None
    with s.working_on("x"):
        pass
    s.add("x", 0.0)
    assert s.take()[0] == "x"


async def test_removed_and_moved_calls_leave_no_stale_entry() -> None:
    s = Schedule()
    s.add("y", 3600)
    s.add("y", 0.0)  # sooner: the later heap entry is stale
    s.remove("y")
    assert s.take()[0] is None and s.waiting == 0


async def test_next_due_wakes_up_for_a_new_call() -> None:
    import asyncio

    s = Schedule()
    waiter = asyncio.create_task(s.next_due(longest=30))
    await asyncio.sleep(0.01)
    s.add("z")
    assert await asyncio.wait_for(waiter, 5) is None  # woken: the caller takes it next
    assert await s.next_due() == "z"
