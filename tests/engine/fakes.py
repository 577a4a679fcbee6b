"""A fake "denoiser" for driving policies and the scheduler without a model."""

from __future__ import annotations

import numpy as np


def _hash01(*keys: np.ndarray) -> np.ndarray:
    """A cheap, vectorised, deterministic hash of integer arrays to [0, 1)."""
    h = np.zeros(np.broadcast(*keys).shape, dtype=np.uint64)
    for k in keys:
        h = (h ^ np.asarray(k, dtype=np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def fake_errors(
    image: int, classes: np.ndarray, samples: np.ndarray, true_class: int, n_classes: int, gap: float = 0.05
) -> np.ndarray:
    """Errors with a per-sample shared component (as shared noise gives), a class offset, and small per-query noise.

    The true class has the lowest mean; other classes are worse by ``gap`` times their distance in id.
    """
    classes = np.asarray(classes, dtype=np.int64)
    samples = np.asarray(samples, dtype=np.int64)
    img = np.full_like(samples, image)
    shared = -np.log1p(-_hash01(img, samples, np.zeros_like(samples)))  # exponential, mean 1
    own = (_hash01(img, samples, classes + 1) - 0.5) * 0.06
    d = np.abs(classes - true_class)
    dist = np.minimum(d, n_classes - d)
    return shared * (1 + gap * dist) + own


def run_policy(policy, true_class: int, n_classes: int, image: int = 0, chunk: int = 7):
    """Drive one policy to its outcome with :func:`fake_errors`, ``chunk`` rows at a time."""
    while not policy.done:
        c, s = policy.take(chunk, speculate=False)
        assert len(c), "policy stalled"
        policy.observe(c, s, fake_errors(image, c, s, true_class, n_classes))
    return policy.outcome()


def fake_bundle(n_classes: int = 5, size: int = 4, T: int = 100, seed: int = 0):
    """A :class:`ModelBundle` with no weights: class c's images are one prototype, and the denoiser is
    the exact eps-predictor for that prototype, ``(x_t - sqrt(abar_t) mu_c) / sqrt(1 - abar_t)``.

    The error of class c is then ``abar_t / (1 - abar_t) * |x0 - mu_c|^2`` plus nothing: the true
    class scores 0, every other class more. It drives the engine end to end (images, conditions,
    kernels, scheduler, policies) in milliseconds; ``prototypes[c]`` in [-1, 1] is an image of class c.
    """
    import torch

    from diffcls_fast.models.bundle import ModelBundle

    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand((n_classes, 1, size, size), generator=gen) * 2 - 1
    acp = torch.linspace(0.999, 0.01, T, dtype=torch.float64)
    a_tab, b_tab = acp.sqrt().float(), (1 - acp).sqrt().float()

    def encode_images(pixels):
        return torch.stack([torch.as_tensor(p, dtype=torch.float32) for p in pixels])

    def encode_prompts(prompts):
        return torch.tensor([int(p) for p in prompts], dtype=torch.long)

    def denoise(x_t, t, cond):
        a, b = a_tab[t].view(-1, 1, 1, 1), b_tab[t].view(-1, 1, 1, 1)
        return (x_t - a * protos[cond]) / b

    bundle = ModelBundle(
        name="fake",
        cond_kind="class",
        latent_shape=(1, size, size),
        image_resolution=size,
        image_channels=1,
        alphas_cumprod=acp,
        prediction_type="epsilon",
        device=torch.device("cpu"),
        dtype=torch.float32,
        fingerprint=f"fake-{n_classes}-{size}-{T}-{seed}",
        text_fingerprint="",
        encode_images=encode_images,
        encode_prompts=encode_prompts,
        denoise=denoise,
        family="class-unet",
        class_names=[str(c) for c in range(n_classes)],
        default_prompts=[str(c) for c in range(n_classes)],
    )
    return bundle, protos
