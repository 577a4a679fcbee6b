"""The engine loop thread survives what a request can do to it (no HTTP: the loop alone)."""

import time

import pytest

from diffcls_fast.images import to_pixels
from diffcls_fast.server.engine_loop import EngineLoop, Job
from diffcls_fast.server.limits import HTTPError
from diffcls_fast.server.metrics import Metrics

from .helpers import digit_pngs, make_classifier


@pytest.fixture(scope="module")
def loop():
    lp = EngineLoop(lambda: make_classifier("halving"), Metrics(), warmup=False)
    lp.start()
    assert lp.ready.wait(120), lp.load_error
    yield lp
    lp.stop(timeout=60)


def _pixels(clf, n):
    _, _, pil = digit_pngs(n)
    m = clf.model
    return [to_pixels(im, m.image_hw, m.image_channels) for im in pil]


def test_a_cancelled_match_fails_with_499_and_the_loop_goes_on(loop):
    # Regression: a client that left a /v1/match request made the loop assemble a MatchResult from
    # unscored images (AttributeError on None) and the loop thread died; every later request hung.
    px = _pixels(loop.clf, 4)
    job = Job(px, None, {}, 60.0, match=(["the digits one", "the digits two"], 50, False))
    fut = loop.submit(job)
    loop.cancel(job)
    with pytest.raises(HTTPError) as e:
        fut.result(timeout=60)
    assert e.value.status == 499
    ok = loop.submit(Job(px[:2], ["zero", "one", "two", "three", "four"], {}, 60.0))
    results = ok.result(timeout=120)
    assert len(results) == 2 and all(r is not None and r.error is None for r in results)
    assert loop._thread.is_alive()


def test_an_unexpected_error_while_admitting_fails_that_job_only(loop, monkeypatch):
    orig = loop.clf.with_options

    def boom(**kw):
        if kw.get("seed") == 12345:
            raise RuntimeError("out of memory (simulated)")
        return orig(**kw)

    monkeypatch.setattr(loop.clf, "with_options", boom)
    px = _pixels(loop.clf, 1)
    bad = loop.submit(Job(px, None, {"seed": 12345}, 60.0))
    with pytest.raises(HTTPError) as e:
        bad.result(timeout=60)
    assert e.value.status == 500 and "out of memory" in str(e.value)
    good = loop.submit(Job(px, None, {"seed": 1}, 60.0))
    assert good.result(timeout=120)[0].error is None
    time.sleep(0.1)
    assert loop._thread.is_alive()


def test_max_queue_counts_jobs_while_they_are_admitted(monkeypatch):
    """Regression: a job taken out of the inbox was counted nowhere while its prompts were encoded
    (outside the lock), so handlers accepted more than --max-queue requests meanwhile."""
    import threading

    lp = EngineLoop(lambda: make_classifier("halving"), Metrics(), max_queue=2, warmup=False)
    lp.start()
    try:
        assert lp.ready.wait(120), lp.load_error
        orig, admitting, release = lp.clf.with_options, threading.Event(), threading.Event()

        def slow(**kw):  # a slow admission: e.g. a large class list being encoded
            if kw.get("seed") == 7:
                admitting.set()
                release.wait(60)
            return orig(**kw)

        monkeypatch.setattr(lp.clf, "with_options", slow)
        px = _pixels(lp.clf, 1)
        first = lp.submit(Job(px, None, {"seed": 7}, 60.0))
        assert admitting.wait(60)  # the loop holds the first job, outside the inbox, not yet live
        second = lp.submit(Job(px, None, {"seed": 1}, 60.0))
        assert lp.pending == 2
        with pytest.raises(HTTPError) as e:
            lp.submit(Job(px, None, {"seed": 2}, 60.0))
        assert e.value.status == 429
        release.set()
        assert first.result(timeout=120)[0].error is None and second.result(timeout=120)[0].error is None
        deadline = time.monotonic() + 10
        while lp.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lp.pending == 0  # every answered job leaves the count (no leak: the queue stays usable)
        assert lp.submit(Job(px, None, {"seed": 3}, 60.0)).result(timeout=120)[0].error is None
        cancelled = Job(px, None, {"seed": 4}, 60.0)
        cancelled.future.cancel()  # cancelled before admission (what a handler's cancel can leave)
        lp.submit(cancelled)
        while lp.pending and time.monotonic() < deadline + 10:
            time.sleep(0.01)
        assert lp.pending == 0
    finally:
        release.set()
        lp.stop(timeout=60)


def test_finish_survives_a_cancel_racing_it():
    """Regression: a handler cancelling the future between _finish's done() check and set_result
    raised InvalidStateError in the loop thread and killed it (every later request hung)."""
    import concurrent.futures

    class Racy(concurrent.futures.Future):
        def done(self):  # the handler's cancel lands right after the check
            was = super().done()
            if not was:
                self.cancel()
            return was

    lp = EngineLoop(lambda: None, Metrics(), warmup=False)
    for error in (None, HTTPError(504, "deadline", "late")):
        job = Job([], None, {}, 60.0, future=Racy())
        lp._accepted.add(job)
        lp._finish(job, error)  # must not raise
        assert job.future.cancelled() and job not in lp._accepted


def test_a_stale_cancel_never_touches_a_live_request():
    """Handles outlive an engine reset: cancelling an old handle must not cancel a new request,
    whatever its id (the ids are process-wide, and cancel checks the handle itself)."""
    clf = make_classifier("halving")
    px = _pixels(clf, 1)
    old_engine, new_engine = clf.engine(), clf.engine()
    old = old_engine.submit(px, ["zero", "one", "seven"])
    new = new_engine.submit(px, ["zero", "one", "seven"])
    assert old.id != new.id
    import dataclasses

    impostor = dataclasses.replace(old, id=new.id)  # an old handle that happens to carry a live id
    new_engine.cancel(impostor)
    assert not new.cancelled and new_engine.has_work
    out = []
    while new_engine.has_work:
        out += new_engine.step()
    assert len(out) == 1 and out[0][2].error is None
