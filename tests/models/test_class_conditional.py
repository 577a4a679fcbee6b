"""Class-conditional folders: DiT (transformer/) and UNet2DModel with class embeddings."""

import json

import pytest
import torch

from diffcls_fast import DiffusionClassifier, UserError, load_model

from .helpers import classify_and_eval, edit_json, refused
from .tiny_folders import make_class_unet_folder, make_dit_folder


def test_dit_with_learned_sigma_prunes(tmp_path, capsys):
    folder = make_dit_folder(tmp_path / "dit", n_classes=5)
    m = load_model(str(folder), device="cpu")
    assert m.cond_kind == "class" and m.family == "dit" and m.class_names[2] == "class2"
    x = torch.randn(3, *m.latent_shape)
    out = m.denoise(x, torch.tensor([1, 2, 3]), m.encode_prompts(["class0", "4", "class2"]))
    assert out.shape == x.shape  # the eps half of the 8 learned-sigma channels
    with pytest.raises(UserError, match="not one of this model's 5 classes"):
        m.encode_prompts(["class9"])
    classify_and_eval(folder, ["class0", "class1", "class3"], tmp_path, capsys)
    # adaptive prunes DiT too
    clf = DiffusionClassifier(m, "adaptive", n_samples=[4, 8], to_keep=[2, 1], use_cache=False)
    r = clf.classify([torch.zeros(3, 16, 16)], [f"class{i}" for i in range(5)])[0]
    assert r.evaluations == 4 * 5 + 4 * 2


def test_class_embedding_unet(tmp_path, capsys):
    folder = make_class_unet_folder(tmp_path / "cu", n_classes=4)
    m = load_model(str(folder), device="cpu")
    assert m.cond_kind == "class" and m.family == "class-unet" and m.class_names == ["0", "1", "2", "3"]
    classify_and_eval(folder, ["0", "2", "3"], tmp_path, capsys)


def test_only_a_dit_transformer_is_loaded_as_dit(tmp_path):
    dit = make_dit_folder(tmp_path / "dit")
    # SD3, PixArt and Flux transformers have their own loaders (tests/families); any other one is no DiT
    edit_json(dit / "transformer" / "config.json", _class_name="AuraFlowTransformer2DModel")
    refused(dit, "AuraFlowTransformer2DModel is not a class-conditional DiT")


def test_broken_class_names_are_one_line(tmp_path):
    dit = make_dit_folder(tmp_path / "dit", n_classes=3)
    (dit / "classes.txt").write_bytes(b"a\n\xff\xfeb\nc\n")
    refused(dit, "classes.txt: not UTF-8 text")
    (dit / "classes.txt").unlink()
    (dit / "model_index.json").write_text(json.dumps({"id2label": {"1": "a", "2": "b", "3": "c"}}))
    refused(dit, "id2label's keys must be the class ids")
    (dit / "model_index.json").write_text("{not json")
    refused(dit, "model_index.json: cannot read JSON")
