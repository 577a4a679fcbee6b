"""The engine's overlap: batch k+1 is scheduled and prepared while batch k runs on the device worker."""

import threading
import time

import numpy as np
import pytest

from diffcls_fast.engine.core import Engine
from diffcls_fast.engine.noise import NoiseBank
from diffcls_fast.engine.options import EngineConfig, RequestOptions
from diffcls_fast.errors import UserError

from .fakes import fake_bundle

N_CLASSES = 12


def _engine(overlap: bool, policy: str, bundle, batch_size: int = 32, max_inflight: int = 4, **options):
    cfg = EngineConfig.build(bundle, batch_size=batch_size, max_inflight=max_inflight, overlap=overlap)
    opts = RequestOptions.build(bundle, "l2", NoiseBank(bundle.latent_shape, 3), policy, options)
    return Engine(bundle, cfg, opts)


def _images(protos, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(protos[i % len(protos)].numpy() + rng.normal(0, 0.4, protos[0].shape)).clip(-1, 1) for i in range(n)]


def _run(engine, images, classes=None):
    req = engine.submit(images, classes if classes is not None else [str(c) for c in range(N_CLASSES)])
    got = [None] * len(images)
    while engine.has_work:
        for r, i, res in engine.step():
            assert r is req
            got[i] = res
    engine.close()
    return got


POLICIES = [
    ("ttest", {"min_scores": 4, "cutoff_pval": 0.05}),
    ("halving", {}),
    ("adaptive", {"n_samples": [4, 8, 16], "to_keep": [6, 3, 1]}),
    ("exhaustive", {"n_grid": 10}),
]


@pytest.mark.parametrize("policy, options", POLICIES)
def test_results_do_not_depend_on_overlap(policy, options):
    bundle, protos = fake_bundle(N_CLASSES, size=4, T=100)
    images = _images(protos, 10)
    plain = _run(_engine(False, policy, bundle, **options), images)
    over = _run(_engine(True, policy, bundle, **options), images)
    for a, b in zip(plain, over):
        assert (a.label, a.evaluations, a.error) == (b.label, b.evaluations, b.error)
        np.testing.assert_array_equal(a.n_scores, b.n_scores)
        np.testing.assert_allclose(a.mean_errors, b.mean_errors, rtol=1e-6, equal_nan=True)
        assert b.evaluations_spent >= b.evaluations


def test_the_next_batch_is_prepared_while_the_denoiser_runs():
    """A denoiser that waits (up to a second) for the host to prepare the next batch: with overlap, only
    a batch with no successor waits in vain. Without overlap every call would time out."""
    bundle, protos = fake_bundle(N_CLASSES, size=4, T=100)
    inner = bundle.denoise
    engine = _engine(True, "exhaustive", bundle, batch_size=16, n_grid=10)
    state = {"prepared": 0, "calls": 0, "timeouts": 0}
    cv = threading.Condition()
    prepare = engine.runner.prepare

    def traced_prepare(batch, states):
        assert threading.current_thread() is threading.main_thread()  # the host half stays on this thread
        out = prepare(batch, states)
        with cv:
            state["prepared"] += 1
            cv.notify_all()
        return out

    def waiting_denoiser(x_t, t, cond):
        assert threading.current_thread() is not threading.main_thread()
        with cv:
            state["calls"] += 1
            successor = state["calls"] + 1  # batch k runs after k preparations; its successor is the (k+1)-th
            if not cv.wait_for(lambda: state["prepared"] >= successor, timeout=1.0):
                state["timeouts"] += 1
        time.sleep(0.005)
        return inner(x_t, t, cond)

    engine.runner.prepare = traced_prepare
    bundle.denoise = waiting_denoiser
    _run(engine, _images(protos, 3))
    assert state["calls"] >= 20  # 3 images x 12 classes x 10 points in batches of 16
    assert state["timeouts"] == 1  # the last batch


def test_cancel_while_a_batch_runs():
    bundle, protos = fake_bundle(N_CLASSES, size=4, T=100)
    engine = _engine(True, "exhaustive", bundle, n_grid=10)
    classes = [str(c) for c in range(N_CLASSES)]
    slow = engine.submit(_images(protos, 4), classes)
    fast = engine.submit(_images(protos, 2, seed=1), classes[:3])
    engine.step()
    assert engine._inflight is not None
    engine.cancel(slow)
    served = set()
    while engine.has_work:
        for req, i, _ in engine.step():
            served.add((req.id, i))
    engine.close()
    assert served == {(fast.id, 0), (fast.id, 1)}


def test_overlap_setting():
    bundle, _ = fake_bundle(3)
    assert EngineConfig.build(bundle).overlap is False  # auto: off on a CPU model
    assert EngineConfig.build(bundle, overlap=True).overlap is True
    with pytest.raises(UserError, match="overlap"):
        EngineConfig.build(bundle, overlap="yes")
