"""Text encoders other than CLIP: a BERT-like encoder named by its config, masked, at the model's token length,
inside the folder or found in an installed package through ``text_encoder/from_package.json``."""

import json

import pytest
import torch
from transformers import AutoTokenizer, BertModel

from diffcls_fast import UserError, load_model
from diffcls_fast.models.text_encoders import uses_attention_mask

from .tiny_folders import make_bert_sd_folder, make_sd_folder


def test_bert_encoder_inside_the_folder(tmp_path):
    root = make_bert_sd_folder(tmp_path / "m", max_tokens=12)
    m = load_model(str(root), device="cpu")
    assert m.cond_shape == (12, 32)
    cond = m.encode_prompts(["a photo of a sneaker", "a bag"])
    assert cond.shape == (2, 12, 32) and cond.dtype == torch.float32
    # the real tokens' states are those of the unpadded prompt: the padding is masked, not attended to
    ref = BertModel.from_pretrained(root / "text_encoder").eval()
    ids = AutoTokenizer.from_pretrained(root / "tokenizer")("a photo of a sneaker", return_tensors="pt").input_ids
    assert ids.shape == (1, 7)  # [CLS] a photo of a sneaker [SEP]
    with torch.no_grad():
        alone = ref(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(cond[0, :7], alone, atol=1e-5, rtol=1e-5)
    # and the model classifies with it: the unet's eps for the two prompts differ
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([500, 500])
    eps = m.denoise(x, t, cond)
    assert eps.shape == x.shape and not torch.allclose(eps[0], m.denoise(x[:1], t[:1], cond[1:])[0])


def test_encoder_from_an_installed_package(tmp_path, monkeypatch):
    root = make_bert_sd_folder(tmp_path / "m", package="tiny_bert_wheel")
    with pytest.raises(UserError, match=r"comes from the package 'tiny_bert_wheel'; pip install tiny_bert_wheel$"):
        load_model(str(root), device="cpu")
    monkeypatch.syspath_prepend(str(root / "site"))  # "installs" it
    m = load_model(str(root), device="cpu")
    assert m.cond_shape == (12, 32)
    inside = load_model(str(make_bert_sd_folder(tmp_path / "same", max_tokens=12)), device="cpu")
    prompts = ["a photo of a coat", "a shirt"]
    torch.testing.assert_close(m.encode_prompts(prompts), inside.encode_prompts(prompts))  # same seed, same weights


def test_package_without_the_encoder_is_one_line(tmp_path, monkeypatch):
    root = make_bert_sd_folder(tmp_path / "m", package="tiny_bert_wheel")
    (root / "site" / "tiny_bert_wheel" / "model" / "config.json").unlink()
    monkeypatch.syspath_prepend(str(root / "site"))
    with pytest.raises(UserError, match="has no encoder in .*reinstall it: pip install tiny_bert_wheel"):
        load_model(str(root), device="cpu")


def test_head_models_and_unknown_classes_are_refused(tmp_path):
    root = make_bert_sd_folder(tmp_path / "m")
    cfg_file = root / "text_encoder" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(UserError, match="BertForMaskedLM is a model with an output head"):
        load_model(str(root), device="cpu")
    cfg_file.write_text(json.dumps({**cfg, "architectures": ["NoSuchModel"]}))
    with pytest.raises(UserError, match="is not a transformers model class"):
        load_model(str(root), device="cpu")


@pytest.mark.parametrize("bad", [1, 10_000, "16"])
def test_max_tokens_is_checked(tmp_path, bad):
    root = make_bert_sd_folder(tmp_path / "m")
    (root / "diffcls.json").write_text(json.dumps({"max_tokens": bad}))
    with pytest.raises(UserError, match="max_tokens must be an integer in 2..64"):
        load_model(str(root), device="cpu")


def test_clip_keeps_stable_diffusions_unmasked_encoding(tmp_path):
    from transformers import CLIPTextConfig

    m = load_model(str(make_sd_folder(tmp_path / "sd")), device="cpu")
    assert not uses_attention_mask(CLIPTextConfig())
    assert uses_attention_mask(CLIPTextConfig(use_attention_mask=True))
    assert m.cond_shape == (16, 32)  # no max_tokens: the tokenizer's and encoder's limit, as before
