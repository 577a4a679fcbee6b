import copy
import json
import shutil

import pytest
import torch

from diffcls_fast import UserError, load_model
from diffcls_fast.models.loader import BUNDLED


@pytest.fixture(scope="module")
def digits():
    return load_model("digits", device="cpu")


def test_bundled_model_bundle(digits):
    m = digits
    assert m.cond_kind == "text" and m.latent_shape == (1, 8, 8) and m.num_timesteps == 1000
    assert m.dtype == torch.float32 and m.device.type == "cpu" and not m.random_weights
    assert m.class_names[7] == "seven" and len(m.default_prompts) == 10
    assert torch.all(m.alphas_cumprod[1:] < m.alphas_cumprod[:-1])


def test_round_trip_save_and_reload_gives_identical_outputs(digits, tmp_path):
    """Save the bundled folder's modules again (save_pretrained) and reload: same eps for the same inputs."""
    net = digits.network
    dst = tmp_path / "copy"
    shutil.copytree(BUNDLED["digits"], dst)
    shutil.rmtree(dst / "unet")
    copy.deepcopy(net).half().save_pretrained(dst / "unet", safe_serialization=True)  # shipped weights are fp16
    m2 = load_model(str(dst), device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 900, 999])
    cond = digits.encode_prompts(["a handwritten digit one"] * 5)
    torch.testing.assert_close(digits.denoise(x, t, cond), m2.denoise(x, t, m2.encode_prompts(["a handwritten digit one"] * 5)))
    assert load_model(str(dst), device="cpu").fingerprint == m2.fingerprint  # stable across loads


def test_encode_prompts_and_images(digits):
    from diffcls_fast.data.digits import load_split

    e = digits.encode_prompts(["a handwritten digit one", "the number 7"])
    assert e.shape[0] == 2 and e.dim() == 3
    assert not torch.allclose(e[0], e[1])
    pil, _, _ = load_split("heldout")
    x = digits.encode_images(pil[:3])
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("remove, fragment", [("unet", "missing unet/"), ("tokenizer", "missing tokenizer/"), ("scheduler", "missing scheduler/")])
def test_missing_component_is_one_line(tmp_path, remove, fragment):
    dst = tmp_path / "m"
    shutil.copytree(BUNDLED["digits"], dst)
    shutil.rmtree(dst / remove)
    with pytest.raises(UserError, match=fragment) as e:
        load_model(str(dst), device="cpu")
    assert "\n" not in str(e.value)


def test_pickle_weights_are_refused(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(BUNDLED["digits"], dst)
    for f in (dst / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(UserError, match="safetensors only"):
        load_model(str(dst), device="cpu")


def test_mismatched_channels(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(BUNDLED["digits"], dst)
    meta = json.loads((dst / "diffcls.json").read_text())
    meta["channels"] = 3
    (dst / "diffcls.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="channels"):
        load_model(str(dst), device="cpu")


def test_v_to_eps_matches_diffusers():
    from diffusers import DDPMScheduler

    from diffcls_fast.models.loader import v_to_eps

    s = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    t = torch.tensor([1, 100, 600, 999])
    x_t = s.add_noise(x0, eps, t)
    v = s.get_velocity(x0, eps, t)
    torch.testing.assert_close(v_to_eps(v, x_t, s.alphas_cumprod[t].double()), eps, atol=1e-4, rtol=1e-4)
