"""The benchmark baseline scores the same (t, eps) pairs as the engine, so speed-ups are at equal accuracy."""

import pytest

from bench.reference_loop import reference_classify
from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.data.digits import load_split
from diffcls_fast.engine.noise import image_key
from diffcls_fast.engine.prompts import ClassSpec
from diffcls_fast.images import preprocess


@pytest.mark.parametrize("n_samples, to_keep", [([5, 20], [3, 1]), ([10], [1])])
def test_reference_loop_matches_engine(n_samples, to_keep):
    model = load_model("digits", device="cpu")
    pil, _, _ = load_split("heldout")
    spec = ClassSpec.from_prompts(model.class_names, model.default_prompts)
    cond = model.encode_prompts(spec.prompts)
    px = [preprocess(im, model.image_resolution, model.image_channels) for im in pil[:4]]
    engine = DiffusionClassifier(model, "adaptive", n_samples=n_samples, to_keep=to_keep, use_cache=False).classify(
        px, spec
    )
    for p, r in zip(px, engine):
        label, evals = reference_classify(
            model, model.encode_images([p])[0], cond, n_samples, to_keep, key=image_key(p)
        )
        assert (label, evals) == (r.label, r.evaluations)
