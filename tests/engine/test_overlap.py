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
    assert EngineConfig.build(bundle, overlap="on").overlap is True  # the CLI's words work in the API too
    assert EngineConfig.build(bundle, overlap="off").overlap is False
    with pytest.raises(UserError, match="overlap"):
        EngineConfig.build(bundle, overlap="yes")


def _thread_recorder(bundle, sleep: float = 0.0):
    """Wrap ``bundle.denoise``: every call's thread (the objects, kept alive so that no id is reused) and the
    most calls seen running at once."""
    inner = bundle.denoise
    seen = {"threads": [], "active": 0, "most": 0}
    lock = threading.Lock()

    def denoise(x_t, t, cond):
        with lock:
            seen["threads"].append(threading.current_thread())
            seen["active"] += 1
            seen["most"] = max(seen["most"], seen["active"])
        try:
            time.sleep(sleep)
            return inner(x_t, t, cond)
        finally:
            with lock:
                seen["active"] -= 1

    bundle.denoise = denoise
    return seen


def test_every_run_uses_the_same_device_thread():
    """Regression: each run (and each engine: every classify call makes one) started its own device thread
    and shut it at the end. Per-thread device state was then built again for every call, or not at all:
    torch.compile's CUDA graph trees live in thread-local storage (torch < 2.13 asserts in a thread that
    did not import them; later versions capture every graph again, in a new memory pool)."""
    bundle, protos = fake_bundle(N_CLASSES, size=4, T=100)
    seen = _thread_recorder(bundle)
    for _ in range(2):
        engine = _engine(True, "exhaustive", bundle, batch_size=16, n_grid=4)
        assert len(list(engine.run(_images(protos, 2), [str(c) for c in range(N_CLASSES)]))) == 2
    assert len(seen["threads"]) >= 4
    assert len(set(seen["threads"])) == 1
    assert seen["threads"][0] is not threading.main_thread()


def test_two_engines_never_run_batches_at_once():
    """Regression: two overlapping engines stepped in turn (two classify_iter generators read in turn) each
    had a device thread, so their batches ran at the same time; batches now queue on one device thread."""
    bundle, protos = fake_bundle(N_CLASSES, size=4, T=100)
    seen = _thread_recorder(bundle, sleep=0.01)
    engines = [_engine(True, "exhaustive", bundle, batch_size=16, n_grid=4) for _ in range(2)]
    for e in engines:
        e.submit(_images(protos, 2), [str(c) for c in range(N_CLASSES)])
    while any(e.has_work for e in engines):
        for e in engines:
            if e.has_work:
                e.step()
    for e in engines:
        e.close()
    assert len(seen["threads"]) >= 6
    assert seen["most"] == 1


def test_the_server_warms_up_on_the_device_thread():
    """Regression: the server warmed the model up on its loop thread, while with overlap the batches run on
    the device thread: what a backend builds per thread (CUDA graphs) was built for a thread that never
    runs a batch (or, torch < 2.13, the device thread's first compiled call asserted)."""
    from diffcls_fast.engine.classifier import DiffusionClassifier
    from diffcls_fast.images import to_pixels
    from diffcls_fast.server.engine_loop import EngineLoop, Job
    from diffcls_fast.server.metrics import Metrics

    bundle, protos = fake_bundle(N_CLASSES, size=4, T=100)
    seen = _thread_recorder(bundle)
    clf = DiffusionClassifier(bundle, "exhaustive", n_grid=4, batch_size=16, overlap=True, use_cache=False)
    loop = EngineLoop(lambda: clf, Metrics(), warmup=True)
    loop.start()
    try:
        assert loop.ready.wait(60), loop.load_error
        warm = len(seen["threads"])
        assert warm == len(clf.buckets)
        px = [to_pixels(im, bundle.image_hw, bundle.image_channels) for im in _images(protos, 2)]
        results = loop.submit(Job(px, [str(c) for c in range(N_CLASSES)], {}, 60.0)).result(timeout=60)
        assert all(r.error is None for r in results)
    finally:
        loop.stop(timeout=60)
    assert len(seen["threads"]) > warm
    assert len(set(seen["threads"])) == 1


def test_prepare_puts_its_tensors_on_a_device_other_than_cuda():
    """Regression: Runner._upload copied to the device only on CUDA and returned the host tensor anywhere else,
    so on an mps model the noise rows and index arrays stayed on the CPU (a device mismatch in execute)."""
    import torch

    bundle, protos = fake_bundle(N_CLASSES, size=4, T=100)
    engine = _engine(False, "exhaustive", bundle, n_grid=4)
    engine.submit(_images(protos, 1), [str(c) for c in range(N_CLASSES)])
    engine._refill()
    batch = engine.sched.schedule()
    engine.runner.device = torch.device("meta")  # neither the CPU nor CUDA, like mps
    p = engine.runner.prepare(batch, engine.states)
    assert {t.device.type for t in (p.eps, p.img_idx, p.noise_idx, p.t, p.cond)} == {"meta"}
