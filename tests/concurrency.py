"""Calling code from many Python threads at once, for the tests of code that many threads
may call (sessions, the server, the quantizers, Ray Serve)."""
from __future__ import annotations

import threading


def run_threads(fns, timeout=300):
    """Call every fns[i]() on its own thread, all started together, and return their results
    in order. Fails the test with what each failing call raised, or when a thread is still
    running after `timeout` seconds."""
    out, errors = [None] * len(fns), []

    def run(i):
        try:
            out[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 (reported below, with the call's index)
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a thread still runs after {timeout} s"
    assert not errors, errors
    return out
