"""Work nobody waits on: bounded tasks for the daemon's life, a low-priority worker thread, and a wait for idle.

The thread copies a file just uploaded into the block cache. At normal priority that copy took the
CPU from the requests that came next: small files written right after `cp` of a large one were
slower than the same files written once the copy was done. At nice 19 the kernel serves those
requests, and the store's server, first. The event loop has no priorities, so work of its own that
nobody waits on waits for a moment when the loop has nothing else to do (`when_idle`).
"""
import concurrent.futures
import contextlib
import logging
import os

import trio

log = logging.getLogger(__name__)


class BackgroundTasks:
    """A nursery that runs as long as the daemon, for tasks started by requests that do not wait on them.
    At most LIMIT tasks hold a slot at a time; one that finds none is not started, never queued."""

    def __init__(self, limit: int):
        self.slots = trio.Semaphore(limit)
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def spawn(self, task):
        """Runs TASK without a slot: its steps take slots of their own."""
        if self._nursery is not None:
            self._nursery.start_soon(_guarded, task)

    def start(self, task) -> bool:
        """Runs TASK in a slot if one is free now; False if none is, or if the tasks do not run."""
        if self._nursery is None:
            return False
        try:
            self.slots.acquire_nowait()
        except trio.WouldBlock:
            return False
        self._nursery.start_soon(self._in_slot, task)
        return True

    async def _in_slot(self, task):
        try:
            await _guarded(task)
        finally:
            self.slots.release()


async def _guarded(task):
    try:
        await task()
    except Exception:  # work in the background must never take the daemon down
        log.exception("a task in the background failed")


IDLE_FOR = 0.0005  # seconds: longer than the gap between a program's requests, shorter than a store's reply
IDLE_WAIT_MOST = 0.1  # a block waiting holds one of the cache's slots for blocks not yet written, which readers need


class _LoopActivity(trio.abc.Instrument):
    """Counts the steps the loop's tasks take, but those of the tasks in `when_idle`, while some are there."""

    def __init__(self):
        self.steps = 0
        self.waiting: set[trio.lowlevel.Task] = set()

    def before_task_step(self, task: trio.lowlevel.Task):
        if task not in self.waiting:
            self.steps += 1


_activity: trio.lowlevel.RunVar = trio.lowlevel.RunVar("fsmount_loop_activity")


async def when_idle():
    """Returns once no other task has taken a step for IDLE_FOR (each waits on a store's reply, the kernel's
    next request), or after IDLE_WAIT_MOST when that moment does not come. Putting a small file written by
    a shell loop into the block cache right after its close held up the next file's create."""
    activity = _activity.get(None)
    if activity is None:
        activity = _LoopActivity()
        _activity.set(activity)
    task = trio.lowlevel.current_task()
    if not activity.waiting:
        trio.lowlevel.add_instrument(activity)
    activity.waiting.add(task)
    try:
        with trio.move_on_after(IDLE_WAIT_MOST):
            while True:
                steps = activity.steps
                await trio.sleep(IDLE_FOR)
                if activity.steps == steps:
                    return
    finally:
        activity.waiting.discard(task)
        if not activity.waiting:
            trio.lowlevel.remove_instrument(activity)


def _lower_priority():
    os.setpriority(os.PRIO_PROCESS, 0, 19)  # on Linux, 0 is the calling thread alone


_worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsmount-background",
                                                initializer=_lower_priority)


async def run_in_background(function, *args):
    """FUNCTION(*ARGS) on the low-priority thread: its result, or its exception."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_):
        with contextlib.suppress(trio.RunFinishedError):  # the daemon stopped meanwhile
            token.run_sync_soon(done.set)

    future = _worker.submit(function, *args)
    future.add_done_callback(wake)
    await done.wait()
    return future.result()
