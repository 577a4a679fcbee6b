"""An in-flight image holds the noise rows of the samples its policy may still ask for, not all it has used."""

import numpy as np
import pytest

from diffcls_fast.engine.core import Engine
from diffcls_fast.engine.noise import NoiseBank
from diffcls_fast.engine.options import EngineConfig, RequestOptions

from .fakes import fake_bundle


@pytest.mark.parametrize(
    "policy, options, samples, bound",
    [
        # classes too close to drop: 300 samples; rows ahead of the rule: at most a batch's worth
        ("ttest", {"min_scores": 5, "max_scores": 300, "cutoff_pval": 1e-12}, 300, 33),
        # a stage's own samples (20, 80 and 100 new ones), never all 200
        ("adaptive", {"n_samples": [20, 100, 200], "to_keep": [4, 2, 1]}, 200, 100),
    ],
)
def test_finished_samples_release_their_noise_rows(policy, options, samples, bound):
    bundle, protos = fake_bundle(6, size=4, T=1000)
    cfg = EngineConfig.build(bundle, batch_size=32, max_inflight=2)
    opts = RequestOptions.build(bundle, "l2", NoiseBank(bundle.latent_shape, 0), policy, options)
    engine = Engine(bundle, cfg, opts)
    near = [(protos[0] * 0.5 + protos[1] * 0.5).numpy() for _ in range(2)]  # halfway: the rule cannot decide
    engine.submit(near, [str(c) for c in range(6)])
    held, results = 0, []
    while engine.has_work:
        results += engine.step()
        held = max([held, *(len(st.noise) for st in engine.states.values())])
    assert len(results) == 2 and all(r.ok for _, _, r in results)
    used = max(int(r.n_scores.max()) for _, _, r in results)
    assert used >= samples * 0.5  # the images did use many samples...
    assert held <= bound  # ...but never held them all
    assert np.isfinite(results[0][2].mean_errors[results[0][2].n_scores > 0]).all()
