"""The engine driven end to end by a fake model bundle (no weights): requests, options, cancellation.

The fake's denoiser is the exact eps-predictor of one prototype image per class, so the true
class has error 0 and the answers are known; everything between (conditions, kernels,
scheduler, policies, results) is the real engine.
"""

import numpy as np
import pytest
import torch

from diffcls_fast import DiffusionClassifier
from diffcls_fast.engine.core import Engine
from diffcls_fast.engine.noise import NoiseBank
from diffcls_fast.engine.options import EngineConfig, RequestOptions

from .fakes import fake_bundle

POLICIES = {
    "ttest": dict(min_scores=3, max_scores=12),
    "halving": dict(rounds=[1, 2, 4], keep=[3, 2, 1]),
    "adaptive": dict(n_samples=[4, 8], to_keep=[2, 1]),
    "exhaustive": dict(n_grid=6),
}


@pytest.fixture(scope="module")
def fake():
    return fake_bundle(n_classes=5)


def _images(protos, labels, jitter=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(protos[c] + jitter * torch.randn(protos[c].shape, generator=g)).clamp(-1, 1) for c in labels]


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_finds_the_true_class_whatever_the_batch_size(fake, policy):
    model, protos = fake
    labels = [3, 0, 4, 1, 2, 2, 0]
    images = _images(protos, labels)
    runs = []
    for batch_size in (8, 64):
        clf = DiffusionClassifier(model, policy, batch_size=batch_size, max_inflight=3, **POLICIES[policy])
        runs.append(clf.classify(images))
    for res in runs:
        assert [r.label for r in res] == labels
    a, b = runs
    assert [r.evaluations for r in a] == [r.evaluations for r in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.mean_errors, y.mean_errors, rtol=1e-5, equal_nan=True)


def test_requests_with_their_own_options_share_batches_and_match_separate_runs(fake):
    model, protos = fake
    config = EngineConfig.build(model, batch_size=16, max_inflight=4)
    bank = NoiseBank(model.latent_shape, 0)
    base = RequestOptions.build(model, "l2", bank, "ttest", POLICIES["ttest"])
    other = base.derive(model, "l2", policy="exhaustive", seed=5, n_grid=4)
    imgs_a, imgs_b = _images(protos, [1, 2, 3]), _images(protos, [4, 0], seed=2)
    classes_b = ["0", "4", "2"]

    engine = Engine(model, config, base)
    ra = engine.submit(imgs_a, None)
    rb = engine.submit(imgs_b, classes_b, options=other)
    got: dict = {ra.id: {}, rb.id: {}}
    while engine.has_work:
        for req, i, r in engine.step():
            got[req.id][i] = r
    alone_a = dict(Engine(model, config, base).run(imgs_a, None))
    alone_b = dict(Engine(model, config).run(imgs_b, classes_b, options=other))
    for mixed, alone in ((got[ra.id], alone_a), (got[rb.id], alone_b)):
        assert sorted(mixed) == sorted(alone)
        for i in alone:
            assert mixed[i].label == alone[i].label and mixed[i].evaluations == alone[i].evaluations
            np.testing.assert_allclose(mixed[i].mean_errors, alone[i].mean_errors, rtol=1e-5, equal_nan=True)
    assert [got[rb.id][i].label_name for i in range(2)] == ["4", "0"]
    assert got[rb.id][0].policy == "exhaustive(grid=4)"


def test_a_cancelled_request_leaves_the_scheduler_and_the_condition_table(fake):
    model, protos = fake
    clf = DiffusionClassifier(model, "exhaustive", n_grid=20, batch_size=8, max_inflight=2)
    engine = clf.engine()
    keep = engine.submit(_images(protos, [1]), None)
    drop = engine.submit(_images(protos, [2, 3, 4]), ["2", "3", "4"])
    engine.step()
    engine.cancel(drop)
    done = []
    while engine.has_work:
        done += [(req.id, i) for req, i, _ in engine.step()]
    assert done == [(keep.id, 0)]
    assert engine.table.live_rows == 0 and engine.live_requests == 0


def test_an_abandoned_run_cancels_its_request(fake):
    model, protos = fake
    clf = DiffusionClassifier(model, "exhaustive", n_grid=10, batch_size=8, max_inflight=1)
    engine = clf.engine()
    it = engine.run(_images(protos, [0, 1, 2, 3]), None)
    next(it)
    it.close()
    assert not engine.has_work and engine.live_requests == 0


def test_a_request_without_options_needs_an_engine_default(fake):
    model, protos = fake
    engine = Engine(model, EngineConfig.build(model))
    with pytest.raises(ValueError, match="no default request options"):
        engine.submit(_images(protos, [0]), None)


def test_run_refuses_an_engine_that_serves_other_requests(fake):
    model, protos = fake
    engine = DiffusionClassifier(model, "exhaustive", n_grid=4).engine()
    engine.submit(_images(protos, [0]), None)
    with pytest.raises(RuntimeError, match="no other request"):
        next(engine.run(_images(protos, [1]), None))
