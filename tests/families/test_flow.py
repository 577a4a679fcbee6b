"""The flow-matching classifier: the σ table, the noising x_t = (1 - σ) x0 + σ ε and the velocity target ε - x0,
each against a plain formula; and naive DDPM scoring of a flow model (what a straight port does) is far off."""

import dataclasses

import numpy as np
import pytest
import torch

from diffcls_fast import DiffusionClassifier, UserError, kernels, load_model
from diffcls_fast.engine.noise import image_key
from diffcls_fast.kernels import reference
from diffcls_fast.models.bundle import ModelBundle
from diffcls_fast.models.common import alphas_cumprod_from_config, make_image_encoder
from diffcls_fast.models.flow import flow_sigmas, snr_alphas_cumprod

FLOW = "FlowMatchEulerDiscreteScheduler"


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
def test_sigmas_are_the_schedulers_training_table(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sig = flow_sigmas(dict(sched.config, _class_name=FLOW))
    assert sig.shape == (1000,) and bool((sig.diff() > 0).all())  # index t up: noisier, as with DDPM
    torch.testing.assert_close(sig.flip(0), sched.sigmas.double(), atol=1e-6, rtol=0)
    s = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(sig, shift * s / (1 + (shift - 1) * s))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"base_shift": 0.0},  # a configured 0 is the pipeline's mu, not the default 0.5
        {"max_shift": 0.0},
        {"base_shift": 0.3, "max_shift": 2.0, "base_image_seq_len": 64, "max_image_seq_len": 1024},
        {"time_shift_type": "linear"},
    ],
)
@pytest.mark.parametrize("seq", [16, 4096])
def test_dynamic_shift_is_the_pipelines(kw, seq):
    """With use_dynamic_shifting, σ is the scheduler's for FluxPipeline's mu, computed from the config's values."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=True, **kw)
    c = sched.config
    mu = calculate_shift(seq, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 1000, 1000), mu=mu)
    sig = flow_sigmas(dict(c, _class_name=FLOW), image_seq_len=seq)
    torch.testing.assert_close(sig, sched.sigmas[:-1].double().flip(0), atol=1e-6, rtol=0)


def test_refused_flow_options():
    with pytest.raises(UserError, match="invert_sigmas"):
        flow_sigmas({"_class_name": FLOW, "invert_sigmas": True})
    with pytest.raises(UserError, match="shift > 0"):
        flow_sigmas({"_class_name": FLOW, "shift": 0})
    with pytest.raises(UserError, match="token count"):
        flow_sigmas({"_class_name": FLOW, "use_dynamic_shifting": True})
    with pytest.raises(UserError, match="flow-matching and sigma-only"):  # the DDPM path still refuses a flow config
        alphas_cumprod_from_config({"_class_name": FLOW})


def test_flow_coefficients_in_the_noising_kernels():
    """make_noisy with a = 1 - σ, b = σ is x_t = (1 - σ) x0 + σ ε (the reference and whatever kernel dispatches)."""
    g = torch.Generator().manual_seed(0)
    sig = flow_sigmas({"_class_name": FLOW, "shift": 3.0})
    x0, eps = torch.randn(3, 4, 5, 6, generator=g), torch.randn(4, 4, 5, 6, generator=g)
    img, noise = torch.tensor([0, 2, 1, 2, 0]), torch.tensor([3, 0, 1, 2, 3])
    t = torch.tensor([0, 999, 500, 10, 250])
    s = sig[t].float()
    want = (1 - s).view(-1, 1, 1, 1) * x0[img] + s.view(-1, 1, 1, 1) * eps[noise]
    for fn in (reference.make_noisy, kernels.make_noisy):
        torch.testing.assert_close(fn(x0, eps, img, noise, 1 - s, s), want)


def test_snr_equivalent_alphas_cumprod():
    sig = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    acp = snr_alphas_cumprod(sig)
    torch.testing.assert_close(acp / (1 - acp), ((1 - sig) / sig) ** 2)  # the same signal-to-noise ratio


@pytest.mark.parametrize("fam, loss", [("sd3", "l2"), ("sd3", "x0"), ("sd-flow", "l2"), ("sd-flow", "x0")])
@torch.no_grad()
def test_engine_errors_are_the_plain_velocity_formula(family_folder, fam, loss):
    """Exhaustive scoring of a tiny flow model (SD3; a pixel-space UNet with a FlowMatch scheduler): every
    class's mean error is the mean over its samples of mean((v_hat - (ε - x0))²) with x_t = (1 - σ_t) x0 + σ_t ε,
    recomputed here by hand. The x0 loss is the x0 error (x0 = x_t - σ v, so σ² times the velocity error)
    weighted by exp(-7 t / T)."""
    model = load_model(str(family_folder(fam)), device="cpu")
    seen = []

    def encode_images(images):
        seen.extend(images)
        return model.encode_images(images)

    spy = dataclasses.replace(model, encode_images=encode_images)
    clf = DiffusionClassifier(spy, "exhaustive", n_grid=4, use_cache=False, loss=loss)
    classes = ["cat", "dog"]
    img = torch.rand(model.image_channels, *model.image_hw, generator=torch.Generator().manual_seed(3)) * 2 - 1
    (res,) = clf.classify([img], classes)
    px = seen[0]
    x0 = model.encode_images([px])[0]
    key = image_key(px)
    pol = clf.options.policy.make(0, 2, model.num_timesteps, clf.options.bank, key, np.ones(2, np.int64))
    cond = model.encode_prompts([model.prompt_template.format(c) for c in classes])
    want = []
    for c in range(2):
        errs = []
        for s in range(4):
            t = pol.timestep(s)
            eps = clf.options.bank.noise(key, s)
            sig = float(model.sigmas[t])
            x_t = (1 - sig) * x0 + sig * eps
            v_hat = model.denoise(x_t[None], torch.tensor([t]), cond[c : c + 1])[0]
            err = float(((v_hat - (eps - x0)) ** 2).mean())
            if loss == "x0":
                err *= sig**2 * np.exp(-7.0 * t / model.num_timesteps)
            errs.append(err)
        want.append(np.mean(errs))
    np.testing.assert_allclose(res.mean_errors, want, rtol=1e-4)


def _oracle_flow_bundle(templates: torch.Tensor) -> ModelBundle:
    """A flow model whose network knows each class's image: for the class c it is told (its condition is the
    template), it returns the exact velocity (x_t - x0_c) / σ_t. On an image of class c its error is 0."""
    sig = flow_sigmas({"_class_name": FLOW, "shift": 3.0})
    sig32 = sig.float()
    shape = tuple(templates.shape[1:])

    def denoise(x_t, t, cond):
        return (x_t - cond.view(-1, *shape)) / sig32[t].view(-1, 1, 1, 1)

    lookup = {f"c{i}": templates[i].reshape(1, -1) for i in range(len(templates))}
    return ModelBundle(
        name="oracle-flow",
        cond_kind="text",
        latent_shape=shape,
        image_resolution=shape[1],
        image_channels=shape[0],
        alphas_cumprod=snr_alphas_cumprod(sig),
        prediction_type="flow",
        sigmas=sig,
        device=torch.device("cpu"),
        dtype=torch.float32,
        fingerprint="oracle",
        text_fingerprint="oracle",
        encode_images=make_image_encoder(None, shape[1], shape[0], torch.device("cpu"), torch.float32),
        encode_prompts=lambda prompts: torch.stack([lookup[p] for p in prompts]),
        denoise=denoise,
        cond_shape=(1, int(np.prod(shape))),
    )


def test_naive_ddpm_scoring_of_a_flow_model_differs():
    """Scored as rectified flow, the oracle has zero error on the true class; scored the naive way (DDPM noising
    with ᾱ, the ε target) the very same network is off on every class, and the true class's lead over the
    runner-up shrinks from total to partial. (An accuracy gap needs a trained flow model: issue 28's numbers-flow.)"""
    g = torch.Generator().manual_seed(0)
    n = 6
    templates = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    flow = _oracle_flow_bundle(templates)
    ddpm_acp = alphas_cumprod_from_config({"_class_name": "DDPMScheduler", "beta_schedule": "linear"})
    naive = dataclasses.replace(flow, prediction_type="epsilon", sigmas=None, alphas_cumprod=ddpm_acp)
    classes = [f"c{i}" for i in range(n)]
    images = [templates[i] for i in range(n)]
    right = DiffusionClassifier(flow, "exhaustive", n_grid=10, use_cache=False).classify(images, classes)
    wrong = DiffusionClassifier(naive, "exhaustive", n_grid=10, use_cache=False).classify(images, classes)
    assert [r.label for r in right] == list(range(n))

    def true_over_runner_up(results):
        return np.array([r.mean_errors[i] / np.delete(r.mean_errors, i).min() for i, r in enumerate(results)])

    assert max(r.mean_errors[i] for i, r in enumerate(right)) < 1e-8
    assert min(r.mean_errors[i] for i, r in enumerate(wrong)) > 0.1  # the ε target is not what the network returns
    assert true_over_runner_up(right).max() < 1e-6
    assert np.median(true_over_runner_up(wrong)) > 0.05
