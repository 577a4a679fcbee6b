"""Turn a scheduled batch into denoiser inputs, run the denoiser, reduce per-query errors.

The only place where tensors meet the scheduler's index arrays. Per batch it
does one host->device copy of small index arrays, one fused ``make_noisy``, one
denoiser call, one fused ``query_errors``, and one device->host copy of the
per-query errors (the batch's only sync).

Images of one batch may belong to requests with different class lists and
seeds: each :class:`ImageState` carries its request's noise bank
and :class:`ClassConditions` (class -> rows of the shared condition table).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import kernels
from ..models.bundle import ModelBundle
from .noise import NoiseBank
from .policies import Policy
from .scheduler import Batch

LOSSES = ("l2", "l1", "huber", "x0")


@dataclass(eq=False)
class ClassConditions:
    """A class list in a condition table: class c is scored with table rows ``prompt_ids[prompt_ptr[c]:prompt_ptr[c +
    1]]``
    (a prompt ensemble when there are several; the query's error is their mean)."""

    cost: np.ndarray  # int64 [C]: denoiser rows per query of each class
    prompt_ptr: np.ndarray  # int64 [C + 1]
    prompt_ids: np.ndarray  # int64: condition-table rows, class after class

    @classmethod
    def from_class_prompts(
        cls, class_prompts: list[np.ndarray], table_rows: np.ndarray | None = None
    ) -> ClassConditions:
        """``class_prompts[c]`` indexes the spec's prompts; ``table_rows[k]`` is prompt k's table row (default: k)."""
        cost = np.array([len(p) for p in class_prompts], dtype=np.int64)
        ids = np.concatenate(class_prompts).astype(np.int64)
        if table_rows is not None:
            ids = np.asarray(table_rows, dtype=np.int64)[ids]
        return cls(cost, np.concatenate([[0], np.cumsum(cost)]).astype(np.int64), ids)


@dataclass
class ImageState:
    """One in-flight image: its latent, its noise (generated once per sample), its policy,
    and its request's noise bank and class rows."""

    key: int
    x0: torch.Tensor  # [C, H, W] float32 on the model's device
    policy: Policy
    bank: NoiseBank
    conditions: ClassConditions
    noise: dict[int, torch.Tensor] = field(default_factory=dict)
    noise_floor: int = 0  # rows of samples below it were dropped (the policy never asks for them again)

    def drop_finished_noise(self) -> None:
        """Free the noise rows of samples the policy has finished with (``Policy.finished_samples``): a t-test
        image that runs to 2,000 samples would otherwise hold them all (128 MB of SD latents)."""
        done = self.policy.finished_samples()
        for s in range(self.noise_floor, done):
            self.noise.pop(s, None)
        self.noise_floor = max(self.noise_floor, done)


@dataclass
class Prepared:
    """One batch's denoiser inputs on the device (:meth:`Runner.prepare`), ready for :meth:`Runner.execute`."""

    size: int  # bucket size (rows + padding)
    rows: int  # real denoiser rows
    n_queries: int
    x0: torch.Tensor  # [images, C, H, W]
    eps: torch.Tensor  # [pairs, C, H, W]: one noise row per (image, sample)
    img_idx: torch.Tensor  # [size] per row: image of x0
    noise_idx: torch.Tensor  # [size] per row: noise row
    t: torch.Tensor  # [size] per row: timestep
    cond: torch.Tensor  # [size] per row: condition-table row
    cond_table: torch.Tensor  # the table as it was when prepared (it may grow while this batch runs)
    pair_img: torch.Tensor | None  # [pairs]: image of each noise row (flow matching's velocity target)
    row_query: torch.Tensor | None  # [rows]: query of each row, with prompt ensembles
    counts: torch.Tensor | None  # [queries]: rows per query, with prompt ensembles


class Runner:
    """Runs scheduled batches of one model with one loss; the engine (:mod:`.core`) sets
    ``cond_table`` to its shared condition table, and every image state carries its own
    noise bank and class rows."""

    def __init__(self, model: ModelBundle, loss: str = "l2"):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        self.model = model
        self.device = model.device
        self.cond_table: torch.Tensor | None = None
        self.kind = "l2" if loss == "x0" else loss
        self.x0_weight = loss == "x0"
        self.T = model.num_timesteps
        # x_t = a[t] x0 + b[t] eps: sqrt(abar), sqrt(1 - abar) for DDPM; 1 - sigma, sigma for flow matching
        a, b = model.noise_coefficients()
        self.a_tab = a.float().to(self.device)
        self.b_tab = b.float().to(self.device)
        # flow matching: denoise() returns the velocity and the error is against eps - x0 (ModelBundle.target)
        self.velocity = model.target == "velocity"
        # Clark & Jaini: the x0 error, weighted by exp(-7 t), t in [0, 1]. From an eps error it is (b / a)^2 times
        # it (x0 = (x_t - b eps) / a); from a velocity error sigma^2 times it (x0 = x_t - sigma v).
        t01 = torch.arange(self.T, dtype=torch.float64) / self.T
        acp = model.alphas_cumprod.to(torch.float64)
        scale = b * b if self.velocity else (1 - acp) / acp
        self.w_tab = (torch.exp(-7.0 * t01) * scale).float().to(self.device)
        self._buffers: dict[int, torch.Tensor] = {}

    def _buffer(self, size: int) -> torch.Tensor:
        # One static x_t buffer per bucket size, in the model's dtype (CUDA graphs can reuse it).
        buf = self._buffers.get(size)
        if buf is None:
            buf = self._buffers[size] = torch.empty(
                (size, *self.model.latent_shape), dtype=self.model.dtype, device=self.device
            )
        return buf

    def _upload(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the model's device. On CUDA through pinned memory, without blocking: a pageable
        copy would wait for the batch the device worker is running (same stream), and the host could not
        prepare the next one meanwhile. Stream order still puts the copy before the kernels that read it. Other
        devices (mps) take a plain copy; on the CPU it is ``t`` itself."""
        dev = torch.device(self.device)
        if dev.type != "cuda":
            return t.to(dev)
        return t.pin_memory().to(dev, non_blocking=True)

    def _eps(self, pairs: list[tuple[ImageState, int]]) -> torch.Tensor:
        """Noise rows of (image, sample) pairs, [P, C, H, W] on the device.

        New rows are drawn on the CPU (device-independent), stacked, and moved in one
        copy; each image caches its rows for the other classes and later batches.
        """
        for st in {id(st): st for st, _ in pairs}.values():
            st.drop_finished_noise()
        missing = [(st, s) for st, s in pairs if s not in st.noise]
        if missing:
            fresh = self._upload(torch.stack([st.bank.noise(st.key, s) for st, s in missing]))
            for (st, s), row in zip(missing, fresh):
                st.noise[s] = row
        return torch.stack([st.noise[s] for st, s in pairs])

    def run(self, batch: Batch, states: dict) -> np.ndarray:
        """Per-query errors (float64, in batch order)."""
        return self.execute(self.prepare(batch, states))

    @torch.no_grad()
    def prepare(self, batch: Batch, states: dict) -> Prepared:
        """The host half of a batch: index arrays, noise rows and timesteps, copied to the device. It reads
        the image states; :meth:`execute` never does, so the engine can prepare batch k+1 while batch k runs."""
        img, cls, smp = batch.image, batch.classes, batch.samples
        # Unique (image, sample) pairs share one noise row and one timestep.
        n_smp = int(smp.max()) + 1
        pair_key, noise_of_query = np.unique(img * n_smp + smp, return_inverse=True)
        pair_img, pair_smp = pair_key // n_smp, pair_key % n_smp
        st_of = [states[rid] for rid in batch.image_ids]
        pairs = [(st_of[r], int(s)) for r, s in zip(pair_img, pair_smp)]
        eps = self._eps(pairs)
        t_pair = np.array([st.policy.timestep(s) for st, s in pairs], dtype=np.int64)
        x0 = torch.stack([st.x0 for st in st_of])

        # Expand queries to denoiser rows (one per prompt of the query's class), looking the
        # prompts up in the class rows of each query's image (runs of images sharing them at once).
        counts = np.empty(len(cls), dtype=np.int64)
        cond_parts = []
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(img)) + 1, [len(img)]])
        start = 0
        for k in range(len(st_of)):
            cr = st_of[k].conditions
            if k + 1 < len(st_of) and st_of[k + 1].conditions is cr:
                continue  # the next image shares the class rows: one lookup for the run
            lo, hi = bounds[start], bounds[k + 1]
            c = cls[lo:hi]
            cnt = cr.cost[c]
            counts[lo:hi] = cnt
            offs = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            cond_parts.append(cr.prompt_ids[np.repeat(cr.prompt_ptr[c], cnt) + offs])
            start = k + 1
        cond_idx = np.concatenate(cond_parts)
        row_query = np.repeat(np.arange(len(cls)), counts)
        rows = len(row_query)
        pad = batch.size - rows
        img_idx = np.concatenate([img[row_query], np.zeros(pad, np.int64)])
        noise_idx = np.concatenate([noise_of_query[row_query], np.zeros(pad, np.int64)])
        cond_idx = np.concatenate([cond_idx, np.full(pad, cond_idx[0], np.int64)])
        t_rows = t_pair[noise_idx]

        # All per-row indices travel to the device in one copy.
        img_idx_t, noise_idx_t, t_t, cond_t = self._upload(
            torch.from_numpy(np.stack([img_idx, noise_idx, t_rows, cond_idx]))
        ).unbind(0)
        multi = rows != len(cls)  # prompt ensembles: a query's error is the mean over its rows
        return Prepared(
            size=batch.size,
            rows=rows,
            n_queries=len(cls),
            x0=x0,
            eps=eps,
            img_idx=img_idx_t,
            noise_idx=noise_idx_t,
            t=t_t,
            cond=cond_t,
            cond_table=self.cond_table,
            pair_img=self._upload(torch.from_numpy(pair_img)) if self.velocity else None,
            row_query=self._upload(torch.from_numpy(row_query)) if multi else None,
            counts=self._upload(torch.from_numpy(counts).float()) if multi else None,
        )

    @torch.no_grad()
    def execute(self, p: Prepared) -> np.ndarray:
        """The device half: noise, denoise, reduce, and copy the per-query errors back (float64)."""
        x_t = kernels.make_noisy(
            p.x0, p.eps, p.img_idx, p.noise_idx, self.a_tab[p.t], self.b_tab[p.t], out=self._buffer(p.size)
        )
        pred = self.model.denoise(x_t, p.t, p.cond_table[p.cond])
        rows = p.rows
        weight = self.w_tab[p.t[:rows]] if self.x0_weight else None
        # the target per (image, sample) pair: eps, or the velocity eps - x0 of a flow-matching model
        target = p.eps - p.x0[p.pair_img].to(p.eps.dtype) if self.velocity else p.eps
        err_rows = kernels.query_errors(pred[:rows], target, p.noise_idx[:rows], kind=self.kind, weight=weight)
        if p.row_query is None:  # one prompt per class: rows are queries
            err = err_rows
        else:  # mean over each query's prompts
            err = torch.zeros(p.n_queries, dtype=torch.float32, device=err_rows.device)
            err.index_add_(0, p.row_query, err_rows)
            err /= p.counts
        return err.double().cpu().numpy()
