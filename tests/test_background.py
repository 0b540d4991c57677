"""The low-priority worker thread: results and errors come back to trio, and the work runs at nice 19."""
import os
import threading

import pytest

from fsmount.cache.background import run_in_background


async def test_work_runs_on_a_thread_of_its_own_at_the_lowest_priority():
    priority, thread = await run_in_background(lambda: (os.getpriority(os.PRIO_PROCESS, 0), threading.get_ident()))
    assert priority == 19 and thread != threading.get_ident()
    assert os.getpriority(os.PRIO_PROCESS, 0) != 19  # the caller's stays as it was


async def test_an_error_comes_back_to_the_caller():
    with pytest.raises(FileNotFoundError):
        await run_in_background(os.stat, "/no/such/path")
