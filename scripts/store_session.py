"""StoreSession: a store reached as the daemon reaches it (a TrioStore, in a trio run with the stores' asyncio loop), from plain code.

The trio run has a thread of its own, for the session's life; `call` hands it a trio function and
waits for its result. scripts/bench loads its data and lists its bucket through it.
"""
import concurrent.futures
import threading

import trio

from fsmount.stores.aio import TrioStore, asyncio_loop
from fsmount.stores.base import Store


class StoreSession:
    def __init__(self, store: Store):
        """Opens STORE; `close` closes it."""
        self.store = TrioStore(store)
        self._calls: trio.MemorySendChannel | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._opened: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=trio.run, args=(self._serve,), name="store-session", daemon=True)
        self._thread.start()
        self._opened.result()

    async def _serve(self):
        try:
            async with asyncio_loop():
                await self.store.open()
                try:
                    self._calls, calls = trio.open_memory_channel(0)
                    self._token = trio.lowlevel.current_trio_token()
                    self._opened.set_result(None)
                    # Calls run as tasks of this one, which holds the asyncio loop: trio's own tasks for calls
                    # from other threads would not see it.
                    async with trio.open_nursery() as nursery:
                        async for function, arguments, result in calls:
                            nursery.start_soon(_answer, function, arguments, result)
                finally:
                    with trio.CancelScope(shield=True):
                        await self.store.close()
        except BaseException as error:
            if not self._opened.done():
                self._opened.set_exception(error)
            raise

    def call(self, function, *arguments):
        """FUNCTION(*ARGUMENTS), a trio function (TrioStore's methods are), run in the session; its result."""
        result = concurrent.futures.Future()
        trio.from_thread.run(self._calls.send, (function, arguments, result), trio_token=self._token)
        return result.result()

    def close(self):
        trio.from_thread.run_sync(self._calls.close, trio_token=self._token)
        self._thread.join()


async def _answer(function, arguments, result: concurrent.futures.Future):
    try:
        result.set_result(await function(*arguments))
    except Exception as error:
        result.set_exception(error)
