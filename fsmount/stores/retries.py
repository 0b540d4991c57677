"""RetryPolicy: which store requests are tried again, after how long, and until when; one policy for every store.

Built on stamina (tenacity underneath): exponential backoff with jitter, bounded in attempts and in
total time, working the same in worker threads, on the trio loop and on the SDKs' asyncio loop.
A throttled or unreachable server is retried; the server's Retry-After, when it sends one, replaces
the computed wait. Anything else (missing, refused, changed) is an answer, not a fault, and is not
retried.
"""
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass

import stamina
import stamina.instrumentation
import tenacity

from fsmount.stores.base import Throttled, Unavailable

log = logging.getLogger(__name__)

_FIRST_WAIT = 0.1  # seconds after the first failure; doubled after each, plus up to as much again at random
_LONGEST_WAIT = 5.0

# Called at each try after a request's first, where a volume counts its requests (fsmount/metrics/store_requests.py).
on_retry: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("on_retry", default=None)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 10  # of one request, the first included
    max_time: float = 30.0  # seconds from the first attempt after which no new attempt starts

    def attempts_of(self) -> stamina.retry_context:
        """The attempts of one request: `for attempt in policy.attempts_of(): with attempt: ...` (or
        `async for`), as stamina documents."""
        return stamina.retry_context(on=self._wait_before_retrying, attempts=self.attempts, timeout=self.max_time,
                                     wait_initial=_FIRST_WAIT, wait_max=_LONGEST_WAIT, wait_jitter=_FIRST_WAIT)

    def call(self, attempt):
        """ATTEMPT() (blocking), tried again as the policy says. The first try runs outside stamina, whose
        bookkeeping would cost every request: only a request that failed pays for it."""
        try:
            return attempt()
        except (Throttled, Unavailable) as error:
            failed = error
        for retry in self.attempts_of():
            with retry:
                if failed is not None:  # stamina's first attempt is that first try: its wait and Retry-After follow
                    error, failed = failed, None
                    raise error
                return attempt()

    async def call_async(self, attempt):
        """ATTEMPT() awaited (on trio or asyncio), tried again as the policy says; as `call`, the first try
        runs outside stamina."""
        try:
            return await attempt()
        except (Throttled, Unavailable) as error:
            failed = error
        async for retry in self.attempts_of():
            with retry:
                if failed is not None:
                    error, failed = failed, None
                    raise error
                return await attempt()

    def _wait_before_retrying(self, error: Exception) -> bool | float:
        """stamina's backoff hook: False for an error not worth retrying; the server's Retry-After, capped by
        the total time, where it sent one."""
        if not isinstance(error, (Throttled, Unavailable)):
            return False
        return True if error.retry_after is None else min(error.retry_after, self.max_time)


class Backoff:
    """The waits between the tries of what is retried without end (a staged file's upload, each try of
    which is itself retried by the RetryPolicy): exponential from FIRST to MOST seconds, with jitter."""

    def __init__(self, first: float, most: float):
        self._wait = tenacity.wait_exponential_jitter(initial=first, max=most, jitter=first)

    def after(self, failures: int) -> float:
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = failures
        return self._wait(state)


def _count_and_log_retry(details: stamina.instrumentation.RetryDetails):
    count = on_retry.get()
    if count is not None:
        count()
    log.debug("%s; try %d again in %.2f s", details.caused_by, details.retry_num + 1, details.wait_for)


stamina.instrumentation.set_on_retry_hooks([_count_and_log_retry])  # not stamina's default: a warning at every retry
