"""Work in the background: bounded tasks, the low-priority thread (results and errors come back), the wait for idle."""
import os
import threading

import pytest
import trio
import trio.testing

from fsmount.cache.background import IDLE_WAIT_MOST, BackgroundTasks, run_in_background, when_idle

pytestmark = pytest.mark.unit


async def test_work_runs_on_a_thread_of_its_own_at_the_lowest_priority():
    priority, thread = await run_in_background(lambda: (os.getpriority(os.PRIO_PROCESS, 0), threading.get_ident()))
    assert priority == 19 and thread != threading.get_ident()
    assert os.getpriority(os.PRIO_PROCESS, 0) != 19  # the caller's stays as it was


async def test_an_error_comes_back_to_the_caller():
    with pytest.raises(FileNotFoundError):
        await run_in_background(os.stat, "/no/such/path")


async def test_tasks_beyond_the_limit_are_refused_not_queued_and_a_failure_frees_its_slot():
    tasks = BackgroundTasks(2)
    assert not tasks.start(trio.sleep_forever)  # not running yet
    release, ran = trio.Event(), []

    async def held():
        await release.wait()
        ran.append("held")

    async def failing():
        raise RuntimeError("a bug in a task")

    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)
        assert tasks.start(held) and tasks.start(held)
        assert not tasks.start(held)
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert ran == ["held", "held"]
        assert tasks.start(failing)
        await trio.testing.wait_all_tasks_blocked()
        assert tasks.start(held) and tasks.start(held)  # both slots free again, the nursery still running
        nursery.cancel_scope.cancel()


async def test_work_waiting_for_idle_goes_after_every_runnable_task_and_not_forever():
    order = []

    async def busy(steps: int):
        for _ in range(steps):
            await trio.sleep(0)
        order.append("busy")

    async def idle_work():
        await when_idle()
        order.append("idle")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(idle_work)
        nursery.start_soon(busy, 1000)
    assert order == ["busy", "idle"]

    async with trio.open_nursery() as nursery:  # a loop that is never idle still lets the work run
        nursery.start_soon(busy, 10**9)
        start = trio.current_time()
        await when_idle()
        waited = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert IDLE_WAIT_MOST <= waited < IDLE_WAIT_MOST + 1
