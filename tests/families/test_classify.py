"""Every family classifies end to end through the engine (the library and the CLI), refuses a broken piece of its
folder with one line naming it, and keys the embedding cache on all of its text encoders."""

import json
import shutil

import numpy as np
import pytest
import torch

from diffcls_fast import DiffusionClassifier, UserError, load_model
from diffcls_fast.cli import main
from diffcls_fast.engine.options import embedding_key

from ..models.tiny_folders import make_image_folder

FAMILIES = ["sdxl", "sd3", "pixart", "flux"]
CLASSES = ["cat", "dog", "bird"]


def _images(n=2):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 16, 16, generator=g) * 2 - 1 for _ in range(n)]


@pytest.mark.parametrize("fam", FAMILIES)
def test_classifies_exhaustive(family_folder, fam):
    model = load_model(str(family_folder(fam)), device="cpu")
    clf = DiffusionClassifier(model, "exhaustive", n_grid=4, batch_size=16, use_cache=False)
    results = clf.classify(_images(), CLASSES)
    for r in results:
        assert r.ok, r.error
        assert r.label_name in CLASSES
        assert r.evaluations == 4 * len(CLASSES)
        assert np.isfinite(r.mean_errors).all() and (r.n_scores == 4).all()
    # deterministic: the same noise and timesteps per image, whatever the batch
    again = DiffusionClassifier(model, "exhaustive", n_grid=4, batch_size=8, use_cache=False).classify(
        _images(), CLASSES
    )
    np.testing.assert_allclose(again[0].mean_errors, results[0].mean_errors, rtol=1e-4)


def test_cli_classify_and_eval_sd3(family_folder, tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", CLASSES[:2], per_class=1)
    model = ["--model", str(family_folder("sd3")), "--device", "cpu"]
    fast = ["--policy", "exhaustive", "--n-grid", "3", "--no-cache"]
    img = next((data / "cat").iterdir())
    assert main(["classify", str(img), *model, "--classes", "cat,dog", "--json", *fast]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["label"] in ("cat", "dog") and row["evaluations"] == 6
    assert main(["eval", *model, "--data", str(data), "--json", *fast]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["images"] == 2


def _copy(family_folder, fam, tmp_path):
    dst = tmp_path / fam
    shutil.copytree(family_folder(fam), dst)
    return dst


def _refused(folder, *fragments):
    with pytest.raises(UserError) as e:
        load_model(str(folder), device="cpu")
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def _edit(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "fam, component",
    [
        ("sdxl", "text_encoder_2"),
        ("sdxl", "tokenizer_2"),
        ("sdxl", "vae"),
        ("sd3", "text_encoder_3"),
        ("sd3", "tokenizer_3"),
        ("sd3", "transformer"),
        ("pixart", "text_encoder"),
        ("flux", "text_encoder_2"),
        ("flux", "transformer"),
    ],
)
def test_missing_component_named(family_folder, tmp_path, fam, component):
    folder = _copy(family_folder, fam, tmp_path)
    if component == "transformer":  # without transformer/ the folder is no model of any family
        for f in (folder / component).glob("*.safetensors"):
            f.unlink()
        _refused(folder, f"{component}: no .safetensors weights")
    else:
        shutil.rmtree(folder / component)
        _refused(folder, f"missing {component}/")


@pytest.mark.parametrize(
    "fam, component, change",
    [
        ("sdxl", "text_encoder_2", {"hidden_size": 24}),  # weights saved at 32
        ("sd3", "text_encoder_3", {"d_ff": 40}),
        ("sd3", "transformer", {"caption_projection_dim": 24}),
        ("pixart", "transformer", {"cross_attention_dim": 48, "attention_head_dim": 24}),
        ("flux", "text_encoder", {"intermediate_size": 40}),
    ],
)
def test_mis_shaped_weights_named(family_folder, tmp_path, fam, component, change):
    folder = _copy(family_folder, fam, tmp_path)
    _edit(folder / component / "config.json", **change)
    _refused(folder, f"/{component}", "cannot load" if fam != "flux" else "")


def test_missing_tensor_named(family_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(family_folder, "sdxl", tmp_path)
    f = next((folder / "text_encoder_2").glob("*.safetensors"))
    sd = load_file(f)
    sd.pop(next(k for k in sd if "text_projection" in k))
    save_file(sd, f, metadata={"format": "pt"})
    _refused(folder, "text_encoder_2", "lack")


def test_sdxl_pieces_must_fit(family_folder, tmp_path):
    folder = _copy(family_folder, "sdxl", tmp_path)
    _edit(folder / "unet" / "config.json", addition_time_embed_dim=4)
    # the unet's pooled + time-id projection no longer fits text_encoder_2 and the 6 ids: found at load
    _refused(folder, "unet projection_class_embeddings_input_dim is 64", "is 40")


def test_flow_family_needs_a_flow_scheduler(family_folder, tmp_path):
    from diffusers import DDPMScheduler

    folder = _copy(family_folder, "sd3", tmp_path)
    shutil.rmtree(folder / "scheduler")
    DDPMScheduler().save_pretrained(folder / "scheduler")
    _refused(folder, "scheduler", "rectified flow")


def test_flux_resolution_must_pack(family_folder, tmp_path):
    folder = _copy(family_folder, "flux", tmp_path)
    (folder / "diffcls.json").write_text(json.dumps({"resolution": 10}))
    _refused(folder, "not a multiple of 4")


@pytest.mark.parametrize(
    "fam, encoder", [("sdxl", "text_encoder_2"), ("sd3", "text_encoder_3"), ("flux", "text_encoder")]
)
def test_embedding_key_covers_every_text_encoder(family_folder, tmp_path, fam, encoder):
    from safetensors.torch import load_file, save_file

    a = load_model(str(family_folder(fam)), device="cpu")
    folder = _copy(family_folder, fam, tmp_path)
    f = next((folder / encoder).glob("*.safetensors"))
    sd = load_file(f)
    k = next(iter(sd))
    sd[k] = sd[k] + 1
    save_file(sd, f, metadata={"format": "pt"})
    b = load_model(str(folder), device="cpu")
    assert embedding_key(a) != embedding_key(b)
    assert not torch.equal(a.encode_prompts(["a cat"]), b.encode_prompts(["a cat"])) or encoder == "text_encoder"


def test_long_prompt_notice_names_the_clip_limit(family_folder):
    from diffcls_fast.engine.conditions import class_spec, prompt_notices

    model = load_model(str(family_folder("sdxl")), device="cpu")
    spec = class_spec(model, ["cat", "a very long description of a dog sitting on a mat"], 64)
    notes = prompt_notices(model, spec)
    assert len(notes) == 1 and "16 tokens" in notes[0][0] and notes[0][1] == {1}


def test_classes_identical_after_truncation_refused_with_that_reason(family_folder):
    model = load_model(str(family_folder("sdxl")), device="cpu")
    clf = DiffusionClassifier(model, "exhaustive", n_grid=2, use_cache=False)
    same_start = ["a photo of a big striped cat", "a photo of a big striped cow"]  # the same first 16 tokens
    with pytest.raises(UserError, match="cannot be told apart.*longer than the .* 16 tokens") as e:
        clf.classify(_images(1), same_start)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fam", FAMILIES)
def test_bf16_runs_close_to_fp32(family_folder, fam):
    """Every module in the requested dtype (diffusers may leave a class in float32 without accelerate), σ and the
    timestep kept in float32: bf16 scores are within bf16's precision of fp32's."""
    half = load_model(str(family_folder(fam)), device="cpu", dtype="bf16")
    full = load_model(str(family_folder(fam)), device="cpu")
    assert {p.dtype for p in half.network.parameters()} == {torch.bfloat16}
    kw = {"n_grid": 3, "use_cache": False}
    a = DiffusionClassifier(half, "exhaustive", **kw).classify(_images(1), CLASSES[:2])[0]
    b = DiffusionClassifier(full, "exhaustive", **kw).classify(_images(1), CLASSES[:2])[0]
    assert a.ok, a.error
    np.testing.assert_allclose(a.mean_errors, b.mean_errors, rtol=2e-2)


@pytest.mark.parametrize("fam", ["sdxl", "flux"])
def test_embedding_cache_stores_the_packed_condition(family_folder, tmp_path, fam):
    """The cache holds the whole packed row (token states, pooled vector, time ids): a cached run scores the same."""
    model = load_model(str(family_folder(fam)), device="cpu")
    kw = {"n_grid": 3, "cache_dir": tmp_path}
    first = DiffusionClassifier(model, "exhaustive", **kw)
    a = first.classify(_images(1), CLASSES)[0]
    again = DiffusionClassifier(model, "exhaustive", **kw)
    b = again.classify(_images(1), CLASSES)[0]
    assert again.config.cache.hits == len(CLASSES) and again.config.cache.misses == 0
    np.testing.assert_array_equal(a.mean_errors, b.mean_errors)


def test_bad_diffcls_json_numbers_are_one_line(family_folder, tmp_path):
    folder = _copy(family_folder, "flux", tmp_path)
    (folder / "diffcls.json").write_text(json.dumps({"resolution": 16, "guidance": "high"}))
    _refused(folder, "diffcls.json: guidance must be a number >= 0, got 'high'")
    (folder / "diffcls.json").write_text(json.dumps({"resolution": 16, "max_tokens": 1}))
    _refused(folder, "diffcls.json: max_tokens must be a number >= 2, got 1")


def test_long_prompt_notice_names_each_encoder_that_cuts(family_folder):
    from diffcls_fast.engine.conditions import class_spec, prompt_notices

    model = load_model(str(family_folder("sd3")), device="cpu")
    assert model.long_prompts.encoders == (("CLIP", 16), ("T5", 24))
    spec = class_spec(model, ["cat", " ".join(["word"] * 40)], 64)
    (sentence, classes), *rest = prompt_notices(model, spec)
    assert not rest and classes == {1}
    assert "CLIP (16 tokens) and T5 (24 tokens) text encoders take" in sentence


def test_long_prompt_notice_says_which_encoder_reads_the_prompt_whole():
    """SD3's T5 reads 256 tokens where its CLIP encoders read 77: a prompt only CLIP cuts is said to be read whole."""
    from types import SimpleNamespace

    from diffcls_fast.engine.conditions import prompt_notices
    from diffcls_fast.engine.prompts import ClassSpec

    def finder(prompts):
        return [(i, 90, (("CLIP", 77, 90),)) for i, p in enumerate(prompts) if p.startswith("long")]

    finder.encoders = (("CLIP", 77), ("T5", 256))
    model = SimpleNamespace(
        name="sd3", cond_kind="text", long_prompts=finder, prompt_tokens=77, cond_shape=(333, 8), prompt_template=None
    )
    spec = ClassSpec(["a", "b"], ["long a", "short b"], [np.array([0]), np.array([1])])
    (sentence, classes), *rest = prompt_notices(model, spec)
    assert not rest and classes == {0}
    assert "longer than the sd3 CLIP text encoder's 77 tokens: it sees only the first 77" in sentence
    assert "its T5 encoder (256 tokens) reads it whole" in sentence
