"""The retry policy every store's requests follow: what is retried, how often, for how long, and the server's Retry-After."""
import email.utils
import time

import pytest
import trio

from fsmount.config import ConfigError, load_config
from fsmount.stores.base import AccessDenied, NotFound, Throttled, Unavailable, retry_after_seconds, status_error
from fsmount.stores.retries import Backoff, RetryPolicy
from conftest import write_config

pytestmark = pytest.mark.unit


def attempted(policy: RetryPolicy, failures: list[Exception]) -> tuple[int, str | Exception]:
    """(attempts made, the result or the error that ended them) of a request failing with FAILURES in turn, then
    answering "done"."""
    count = 0
    try:
        for attempt in policy.attempts_of():
            with attempt:
                count += 1
                if failures:
                    raise failures.pop(0)
                result = "done"
    except Exception as error:  # noqa: BLE001 - the error is the result under test
        return count, error
    return count, result


def test_throttling_and_unreachable_servers_are_retried_until_they_answer():
    failures = [Throttled("GET a: 503"), Unavailable("GET a: ConnectionResetError"), status_error(500, "GET a: 500")]
    assert attempted(RetryPolicy(attempts=5), failures) == (4, "done")


@pytest.mark.parametrize("answer", [NotFound("GET a: 404"), AccessDenied("GET a: 403"), status_error(412, "GET a: 412")])
def test_an_answer_is_not_retried(answer):
    count, error = attempted(RetryPolicy(attempts=5), [answer])
    assert (count, error) == (1, answer)


def test_the_last_failure_is_raised_once_the_attempts_are_spent():
    failures = [Throttled(f"GET a: 503 #{number}") for number in range(5)]
    count, error = attempted(RetryPolicy(attempts=3), failures)
    assert count == 3 and isinstance(error, Throttled) and str(error).endswith("#2")


def test_no_attempt_starts_after_the_total_time():
    failures = [Throttled("GET a: 503")] * 100
    started = time.monotonic()
    count, error = attempted(RetryPolicy(attempts=100, max_time=1.0), failures)
    assert isinstance(error, Throttled) and 2 < count < 100
    assert time.monotonic() - started < 1.0 + 5.0 + 1.0  # the cap, one longest wait, one slow machine's margin


def test_retry_after_replaces_the_backoff():
    slow = status_error(503, "PUT a: 503", retry_after="0.5")
    started = time.monotonic()
    assert attempted(RetryPolicy(), [slow]) == (2, "done")
    assert time.monotonic() - started >= 0.5


def test_a_retry_after_past_the_total_time_waits_only_that_long():
    error = status_error(503, "PUT a: 503", retry_after="3600")
    assert RetryPolicy(max_time=2.0)._wait_before_retrying(error) == 2.0


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after_seconds("7") == 7.0
    assert 25 < retry_after_seconds(email.utils.formatdate(time.time() + 30, usegmt=True)) <= 30
    assert retry_after_seconds(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None


async def test_requests_on_the_trio_loop_are_retried_with_trio_sleeping():
    failures = [Throttled("GET a: 503"), Throttled("GET a: 503")]
    count = 0
    with trio.fail_after(10):
        async for attempt in RetryPolicy().attempts_of():
            with attempt:
                count += 1
                if failures:
                    raise failures.pop()
    assert count == 3


def test_a_staged_upload_waits_longer_after_each_failure_up_to_the_most():
    backoff = Backoff(first=1.0, most=60.0)
    waits = [backoff.after(failures) for failures in range(1, 12)]
    assert 1.0 <= waits[0] <= 2.0 and 2.0 <= waits[1] <= 3.0
    assert waits[-1] == 60.0 and all(wait <= 60.0 for wait in waits)


def test_retries_in_the_config(tmp_path):
    volumes = f'link_mounts: ["{tmp_path}"]\nvolumes {{ data {{ source: "file://{tmp_path}" }} }}\n'
    config = load_config(write_config(tmp_path, "retries { attempts: 4, max_time: 90s }\n" + volumes))
    assert config.retries == RetryPolicy(attempts=4, max_time=90.0)
    assert load_config(write_config(tmp_path, volumes)).retries == RetryPolicy()
    with pytest.raises(ConfigError, match="retries.attempts"):
        load_config(write_config(tmp_path, "retries { attempts: 0 }\n" + volumes))
    with pytest.raises(ConfigError, match="retries.tries"):
        load_config(write_config(tmp_path, "retries { tries: 3 }\n" + volumes))


def test_call_tries_once_outside_stamina_then_follows_the_policy():
    failures = [status_error(503, "GET a: 503", retry_after="0.3"), Unavailable("GET a: reset")]
    tries = []

    def attempt():
        tries.append(time.monotonic())
        if failures:
            raise failures.pop(0)
        return "done"

    assert RetryPolicy(attempts=3).call(attempt) == "done"
    assert len(tries) == 3 and tries[1] - tries[0] >= 0.3  # the first failure's Retry-After was waited


def test_call_counts_the_first_try_among_the_attempts_and_raises_answers_at_once():
    def throttled():
        raise Throttled("GET a: 503")

    count = 0

    def counted():
        nonlocal count
        count += 1
        throttled()

    with pytest.raises(Throttled):
        RetryPolicy(attempts=3).call(counted)
    assert count == 3
    with pytest.raises(NotFound):
        RetryPolicy().call(lambda: (_ for _ in ()).throw(NotFound("GET a: 404")))


async def test_call_async_retries_on_the_trio_loop():
    failures = [Throttled("GET a: 503")]

    async def attempt():
        if failures:
            raise failures.pop()
        return "done"

    with trio.fail_after(10):
        assert await RetryPolicy().call_async(attempt) == "done"
    assert not failures
