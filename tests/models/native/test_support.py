"""Which folders run natively: every config key is checked, and anything else goes to the libraries.

For each key of the bundled configs, a value the native modules do not implement (or the key missing, or a
key they have never seen) is a refusal; ``load_model`` then runs diffusers / transformers, and says so.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffcls_fast import UserError, load_model
from diffcls_fast.models.bundled import BUNDLED
from diffcls_fast.models.native.support import (
    _ANY,
    CLIP_TEXT_KEYS,
    UNET_KEYS,
    clip_text_refusal,
    tokenizer_refusal,
    unet_refusal,
)

from .reference import NATIVE_BUNDLED, config


def _other_value(v):
    """A value of another kind or size than ``v``, which a config could hold."""
    if v is None:
        return "something"
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1 if v >= 1 else v + 0.5
    if isinstance(v, str):
        return v + "_other"
    if isinstance(v, list):
        return v + v[-1:]
    raise AssertionError(v)


@pytest.mark.parametrize("model", NATIVE_BUNDLED)
def test_the_bundled_configs_are_accepted(model):
    tok_cfg = json.loads((BUNDLED[model] / "tokenizer" / "tokenizer_config.json").read_text())
    assert unet_refusal(config(model, "unet")) is None
    assert clip_text_refusal(config(model, "text_encoder")) is None
    assert tokenizer_refusal(config(model, "tokenizer"), tok_cfg) is None


# keys whose other values are still implemented (structural sizes the module is built from)
UNET_FREE = {
    "in_channels",
    "out_channels",
    "cross_attention_dim",
    "layers_per_block",
    "transformer_layers_per_block",
    "norm_eps",
    "sample_size",
}


@pytest.mark.parametrize("key", sorted(k for k, rule in UNET_KEYS.items() if rule is not _ANY and k not in UNET_FREE))
def test_each_unet_key_with_another_value_is_refused(key):
    cfg = config("digits", "unet")
    cfg[key] = _other_value(cfg[key])
    why = unet_refusal(cfg)
    assert why is not None and "unet/config.json" in why


@pytest.mark.parametrize("key", sorted(k for k, rule in CLIP_TEXT_KEYS.items() if rule is not _ANY))
def test_each_text_encoder_key_with_a_wrong_kind_of_value_is_refused(key):
    cfg = config("digits", "text_encoder")
    cfg[key] = "a string" if not isinstance(cfg[key], str) else cfg[key] + "_other"
    assert clip_text_refusal(cfg) is not None


@pytest.mark.parametrize("check, component", [(unet_refusal, "unet"), (clip_text_refusal, "text_encoder")])
def test_an_unknown_or_missing_key_is_refused(check, component):
    cfg = config("digits", component)
    assert "not one the native implementation knows" in check({**cfg, "some_new_option": 1})
    first = next(k for k in cfg if not k.startswith("_") and k != "dtype")
    assert "missing" in check({k: v for k, v in cfg.items() if k != first})


def test_inconsistent_block_lists_and_group_counts_are_refused():
    cfg = config("digits", "unet")
    assert "lengths" in unet_refusal({**cfg, "up_block_types": cfg["up_block_types"][:2]})
    assert "norm_num_groups" in unet_refusal({**cfg, "norm_num_groups": 7})
    assert "head count" in unet_refusal({**cfg, "attention_head_dim": 5})
    assert "num_attention_heads" in clip_text_refusal({**config("digits", "text_encoder"), "num_attention_heads": 5})


@pytest.mark.parametrize(
    "edit",
    [
        lambda t, c: t.update(normalizer=None),
        lambda t, c: t.update(normalizer={"type": "NFKC"}),
        lambda t, c: t.update(pre_tokenizer={"type": "WhitespaceSplit"}),
        lambda t, c: t["model"].update(type="WordPiece"),
        lambda t, c: t["model"].update(continuing_subword_prefix="##"),
        lambda t, c: t["added_tokens"][0].update(normalized=True),
        lambda t, c: t["added_tokens"][1].update(lstrip=True),
        lambda t, c: t.update(post_processor=None),
        lambda t, c: t["post_processor"]["single"].append({"Sequence": {"id": "B", "type_id": 1}}),
        lambda t, c: t.update(extra_stage={}),
        lambda t, c: c.update(padding_side="left"),
        lambda t, c: c.update(truncation_side="left"),
        lambda t, c: c.update(tokenizer_class="CLIPTokenizer"),
        lambda t, c: c.update(do_lower_case=True),
        lambda t, c: c.pop("model_max_length"),
        lambda t, c: c.update(pad_token="<pad>"),
    ],
)
def test_tokenizer_changes_are_refused(edit):
    tok = config("digits", "tokenizer")
    tok_cfg = json.loads((BUNDLED["digits"] / "tokenizer" / "tokenizer_config.json").read_text())
    edit(tok, tok_cfg)
    assert tokenizer_refusal(tok, tok_cfg) is not None


@pytest.mark.parametrize("model", NATIVE_BUNDLED)
def test_the_bundled_models_load_natively(model):
    m = load_model(model, device="cpu")
    assert m.implementation == "native"
    assert "native" in m.describe()


def _copy(tmp_path, model="digits"):
    dst = tmp_path / model
    shutil.copytree(BUNDLED[model], dst)
    return dst


def _edit(path, **changes):
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize(
    "change",
    [
        ("unet/config.json", {"upcast_attention": True}),
        ("unet/config.json", {"a_future_option": 3}),
        ("text_encoder/config.json", {"hidden_act": "gelu"}),
        ("tokenizer/tokenizer_config.json", {"padding_side": "left"}),
    ],
    ids=["unet", "unet-unknown-key", "text-encoder", "tokenizer"],
)
def test_a_folder_outside_the_native_subset_runs_on_the_libraries(tmp_path, change):
    folder = _copy(tmp_path)
    _edit(folder / change[0], **change[1])
    m = load_model(str(folder), device="cpu")
    assert m.implementation == "diffusers"
    assert "diffusers" in m.describe()


def test_weights_with_an_extra_tensor_go_to_the_libraries_which_ignore_it(tmp_path):
    folder = _copy(tmp_path)
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({**load_file(f), "extra.weight": torch.zeros(2)}, f)
    assert load_model(str(folder), device="cpu").implementation == "diffusers"


def test_weights_missing_a_tensor_are_refused_as_before(tmp_path):
    folder = _copy(tmp_path)
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(f)
    del state["conv_in.weight"]
    save_file(state, f)
    with pytest.raises(UserError, match="lack 1 tensor"):
        load_model(str(folder), device="cpu")


def test_an_unknown_implementation_is_a_user_error():
    with pytest.raises(UserError, match="implementation 'nope'"):
        load_model("digits", implementation="nope")


@pytest.mark.parametrize("model", NATIVE_BUNDLED)
def test_a_native_bundle_answers_as_the_library_one(model):
    """The whole bundle: prompts, the denoiser (eps), the schedule, shapes and fingerprints."""
    native = load_model(model, device="cpu")
    ref = load_model(model, device="cpu", implementation="diffusers")
    assert ref.implementation == "diffusers"
    for key in ("latent_shape", "image_resolution", "image_channels", "cond_shape", "prediction_type", "unk_token"):
        assert getattr(native, key) == getattr(ref, key), key
    assert (native.fingerprint, native.text_fingerprint) == (ref.fingerprint, ref.text_fingerprint)
    assert torch.equal(native.alphas_cumprod, ref.alphas_cumprod)
    prompts = native.default_prompts + ["a zebra", "seven seven seven seven seven seven seven seven seven seven x"]
    e_native, e_ref = native.encode_prompts(prompts), ref.encode_prompts(prompts)
    torch.testing.assert_close(e_native, e_ref, rtol=1e-5, atol=1e-6)
    assert native.unknown_words(prompts) == ref.unknown_words(prompts)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, *native.latent_shape, generator=g)
    t = torch.randint(0, native.num_timesteps, (5,), generator=g)
    cond = e_ref[torch.arange(5) % len(prompts)]
    torch.testing.assert_close(native.denoise(x, t, cond), ref.denoise(x, t, cond), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_bundles_follow_the_library(dtype):
    """The default on CUDA is fp16: the native modules run the same ops in the same dtype."""
    native = load_model("digits", device="cpu", dtype=dtype)
    ref = load_model("digits", device="cpu", dtype=dtype, implementation="diffusers")
    assert native.implementation == "native" and native.dtype == ref.dtype
    e_native, e_ref = native.encode_prompts(native.default_prompts), ref.encode_prompts(native.default_prompts)
    torch.testing.assert_close(e_native, e_ref)  # torch's default tolerances for the dtype
    x = torch.randn(4, *native.latent_shape, generator=torch.Generator().manual_seed(0)).to(native.dtype)
    t = torch.tensor([1, 100, 500, 999])
    torch.testing.assert_close(native.denoise(x, t, e_ref[:4]), ref.denoise(x, t, e_ref[:4]))
