"""bench.fashion_wording's prompt sets: ten classes each, ensembles as class prompt lists, no trained caption
among the "unseen" sets."""

import numpy as np

from bench.fashion_wording import prompt_sets, spec_of
from diffcls_fast.data import fashion


def test_every_set_has_one_prompt_list_per_class_and_makes_a_valid_spec():
    for name, per_class in prompt_sets().items():
        assert len(per_class) == 10, name
        spec = spec_of(per_class)
        assert spec.names == fashion.CLASS_NAMES
        for c, ids in enumerate(spec.class_prompts):
            assert [spec.prompts[i] for i in np.asarray(ids)] == per_class[c]


def test_the_unseen_sets_hold_no_training_caption():
    trained = {fashion.prompt(c, t) for c in range(10) for t in range(len(fashion.TEMPLATES))}
    for name, per_class in prompt_sets().items():
        if "unseen" in name or "synonym" in name:
            assert not trained & {p for ps in per_class for p in ps}, name
