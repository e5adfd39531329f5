"""Waiting in tests for something a part exposes only as state (a metric, a row in the agent's
store), not as an event to block on: poll it, with a deadline that names what never came."""

import time

POLL_S = 0.01


def until(predicate, timeout, what="condition"):
    """Poll ``predicate`` until it returns a true value, and return that value; AssertionError
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "%s not met within %s s" % (what, timeout)
        time.sleep(POLL_S)
