"""The engine core: one scheduler and one runner serving many requests at once.

``DiffusionClassifier.classify_iter`` (and so ``classify``, ``eval`` and ``match``) and
the HTTP server (:mod:`diffcls_fast.server`) all drive the same object, so a
result never depends on which door it came through::

    engine = Engine(model, EngineConfig.build(model), options)
    req = engine.submit(images, classes)               # a handle; images may be a lazy iterable
    other = engine.submit(more, ["cat", "dog"], options.derive(model, "l2", seed=3, policy="halving"))
    while engine.has_work:
        for req, index, result in engine.step():      # one denoiser batch per step
            ...
    engine.cancel(req)                                 # drops its queries from the scheduler

Each request carries its own class list (prompts or prompt ensembles) and its
:class:`RequestOptions` (policy, noise bank, posterior temperature and floor). The
engine-wide settings are the model and the :class:`EngineConfig` (loss, buckets,
in-flight bound, speculation, embedding cache); none of them changes a result
beyond the floating-point tolerance of batch composition (docs, "Determinism").

Requests with different class lists share batches through one condition table:
the union of the live requests' prompt embeddings, keyed by prompt content (two
requests naming the same prompt share its row). Each in-flight image knows its
request's class -> table-row map (:class:`ClassConditions`), and the runner looks the
rows up per query. Rows are reference-counted and reused once no live request
needs them, so a long-running server's table holds only what is in flight.

Pure orchestration: tensors are made by the model bundle and the runner, the
decisions by the policies and the scheduler.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import kernels
from ..errors import NonFiniteInput, UserError
from ..images import to_pixels
from .conditions import Classes, Notice, check_distinct, class_spec, encode_conditions, prompt_notices
from .noise import image_key
from .options import EngineConfig, RequestOptions
from .prompts import ClassSpec
from .results import ClassificationResult, RunStats, failed_result, image_result
from .runner import ClassConditions, ImageState
from .scheduler import Scheduler, SchedulerStats

if TYPE_CHECKING:
    from ..models.bundle import ModelBundle


_REQUEST_IDS = itertools.count()
SWITCH_INTERVAL = 2e-4  # seconds: the interpreter's GIL switch interval once an engine overlaps (see device_thread)
_DEVICE_LOCK = threading.Lock()
_device: tuple[int, Any] | None = None  # (pid, the device thread's executor)


def device_thread():
    """The process's one device thread (overlap), a one-thread executor started on first use.

    Every overlapping engine runs its batches on it, in launch order, and the server warms the model up on it
    (:meth:`Engine.on_device`). So the state a thread keeps for the device is built once and serves every batch
    of every run (torch.compile's CUDA graph trees are thread-local: torch < 2.13 asserts in a thread that did
    not set them up, later versions capture every graph again for each new thread), and two engines' batches
    never run at once (a backend's static buffers, such as a CUDA graph's output, are shared)."""
    global _device
    from concurrent.futures import ThreadPoolExecutor

    with _DEVICE_LOCK:
        if _device is None or _device[0] != os.getpid():  # a forked child has no such thread: it starts its own
            _device = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffcls-device"))
            # The host's work is numpy on small arrays, which holds the GIL: at the default 5 ms switch interval the
            # device thread, ready to launch or finish a batch, could wait that long for it. 0.2 ms (process-wide;
            # never raised) bounds that wait.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        return _device[1]


class ConditionTable:
    """The condition rows of every live request, keyed by prompt content, reference-counted.

    ``tensor`` is ``[capacity, *cond_shape]`` on the model's device; it grows by
    doubling (the runner re-reads it every batch) and free rows are reused.
    """

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None
        self.row_of: dict[str, int] = {}
        self.refs: list[int] = []
        self.free: list[int] = []

    @property
    def live_rows(self) -> int:
        return len(self.row_of)

    def acquire(self, prompts: list[str], cond: torch.Tensor) -> np.ndarray:
        """Table rows of ``prompts`` (``cond[k]`` is the condition of ``prompts[k]``); one reference each."""
        if self.tensor is None:
            self.tensor = torch.empty((max(8, len(prompts)), *cond.shape[1:]), dtype=cond.dtype, device=cond.device)
            self.refs = [0] * len(self.tensor)
            self.free = list(range(len(self.tensor) - 1, -1, -1))
        rows = np.empty(len(prompts), dtype=np.int64)
        for k, pr in enumerate(prompts):
            r = self.row_of.get(pr)
            if r is None:
                if not self.free:
                    self._grow()
                r = self.free.pop()
                self.tensor[r] = cond[k].to(self.tensor.device, self.tensor.dtype)
                self.row_of[pr] = r
            self.refs[r] += 1
            rows[k] = r
        return rows

    def release(self, prompts: list[str]) -> None:
        for pr in prompts:
            r = self.row_of[pr]
            self.refs[r] -= 1
            if self.refs[r] == 0:
                del self.row_of[pr]
                self.free.append(r)

    def _grow(self) -> None:
        old = self.tensor
        cap = 2 * len(old)
        self.tensor = torch.empty((cap, *old.shape[1:]), dtype=old.dtype, device=old.device)
        self.tensor[: len(old)] = old
        self.refs += [0] * (cap - len(old))
        self.free = list(range(cap - 1, len(old) - 1, -1))


@dataclass(eq=False)
class Request:
    """A handle on one submitted request: its class list, options, and progress."""

    id: int
    options: RequestOptions  # policy, noise bank, posterior temperature and floor
    spec: ClassSpec
    chunk: int
    images: Iterator[tuple[int, Any]]
    # sentences about the prompts (cut at the token limit, unknown words); classify_iter issues each as a
    # DiffclsWarning, the server returns them in "warnings"
    warnings: list[str] = field(default_factory=list)
    conditions: ClassConditions | None = None  # None for a one-class request (answered without the model)
    peeked: list = field(default_factory=list)  # the next (index, image), pulled ahead of its chunk
    exhausted: bool = False  # every input image has been pulled from ``images``
    inputs: int = 0  # images pulled so far
    finished: int = 0  # images answered so far
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> bool:
        return self.cancelled or (self.exhausted and self.finished == self.inputs)


Event = tuple[Request, int, ClassificationResult]  # (request, input index within it, result)


class Engine:
    """One scheduler, runner and condition table for every request; see the module docstring.

    Not thread-safe: one thread owns an engine (the server's engine loop, or the
    caller of ``classify_iter``).
    """

    MEMO_ROWS = 1024  # condition rows of recently seen class lists kept ready (beyond them the disk cache serves)

    def __init__(self, model: ModelBundle, config: EngineConfig, options: RequestOptions | None = None):
        self.model = model
        self.config = config
        self.options = options  # a request's options when it names none
        self.sched = Scheduler(list(config.buckets), config.max_inflight, config.speculate)
        self.table = ConditionTable()
        self.runner = config.make_runner(model, config.loss)
        self.states: dict[int, ImageState] = {}
        self._owner: dict[int, tuple[Request, int]] = {}  # scheduler id -> (request, input index)
        self._started: dict[int, float] = {}  # scheduler id -> time of its first batch
        self._requests: OrderedDict[int, Request] = OrderedDict()  # live requests, oldest first
        self._ready: deque[Event] = deque()  # results known before scoring (failed inputs, one-class requests)
        self._ids = _REQUEST_IDS  # process-wide: a handle of an engine since replaced never names a live request
        self._uids = itertools.count()
        self._memo: OrderedDict[tuple, tuple[torch.Tensor, list[Notice]]] = OrderedDict()
        self.images_done = 0
        self._inflight: tuple[Any, Any] | None = None  # (batch, future) running on the device thread (overlap)

    # -- requests ------------------------------------------------------------------------
    def submit(
        self, images: Iterable[Any], classes: Classes = None, options: RequestOptions | None = None, chunk: int = 32
    ) -> Request:
        """Queue ``images`` (any iterable of accepted image forms, pulled lazily) for ``classes``.

        ``options`` are the request's (default: the engine's own). Class-list errors (empty,
        duplicated, classes that encode alike) raise :class:`UserError` here, before anything
        is queued.
        """
        options = options if options is not None else self.options
        if options is None:
            raise ValueError("this engine has no default request options; pass options")
        spec = class_spec(self.model, classes, self.config.max_batch)
        req = Request(next(self._ids), options, spec, max(1, int(chunk)), iter(enumerate(images)))
        if len(spec) > 1:
            cond, notices = self.encode_classes(spec, options.distinct_classes)
            req.warnings = [sentence for sentence, _ in notices]
            prompt_rows = self.table.acquire(spec.prompts, cond)
            req.conditions = ClassConditions.from_class_prompts(spec.class_prompts, prompt_rows)
            self.runner.cond_table = self.table.tensor
        self._requests[req.id] = req
        return req

    def encode_classes(self, spec: ClassSpec, distinct: bool = True) -> tuple[torch.Tensor, list[Notice]]:
        """The spec's condition rows and the notices about its prompts (cut, unknown words), checked
        (memoised: a server sees the same class lists again and again). ``distinct``: refuse classes that encode
        alike."""
        prompt_ids = tuple(tuple(int(i) for i in c) for c in spec.class_prompts)
        key = (distinct, tuple(spec.names), tuple(spec.prompts), prompt_ids)
        hit = self._memo.get(key)
        if hit is not None:
            self._memo.move_to_end(key)
            return hit
        notices = prompt_notices(self.model, spec)
        cond = encode_conditions(self.model, spec, self.config.cache)
        if distinct:
            check_distinct(spec, cond, notices)
        # Bounded by condition rows, not entries: one 1,000-prompt SD table is 315 MB.
        if len(cond) <= self.MEMO_ROWS:
            self._memo[key] = (cond, notices)
            while sum(len(c) for c, _ in self._memo.values()) > self.MEMO_ROWS:
                self._memo.popitem(last=False)
        return cond, notices

    def cancel(self, req: Request) -> None:
        """Stop work on ``req``: its images leave the scheduler (no more of their queries run) and its
        rows the table."""
        if req.cancelled or self._requests.get(req.id) is not req:
            req.cancelled = True
            return
        req.cancelled = True
        uids = [u for u, (r, _) in self._owner.items() if r is req]
        self.sched.remove(uids)
        for u in uids:
            self._drop(u)
        self._ready = deque(e for e in self._ready if e[0] is not req)
        self._close(req)

    def _close(self, req: Request) -> None:
        self._requests.pop(req.id, None)
        if req.conditions is not None:
            self.table.release(req.spec.prompts)
            req.conditions = None

    def _drop(self, uid: int) -> None:
        self.states.pop(uid, None)
        self._owner.pop(uid, None)
        self._started.pop(uid, None)

    @property
    def has_work(self) -> bool:
        return bool(
            self._ready
            or self._inflight is not None
            or self.sched.has_work
            or any(not r.exhausted for r in self._requests.values())
        )

    @property
    def live_requests(self) -> int:
        return len(self._requests)

    @property
    def waiting_images(self) -> int:
        """Images queued in the scheduler, not yet admitted."""
        return len(self.sched.waiting)

    @property
    def inflight_images(self) -> int:
        return len(self.sched.running)

    @property
    def stats(self) -> SchedulerStats:
        return self.sched.stats

    # -- one step ------------------------------------------------------------------------
    def step(self) -> list[Event]:
        """Admit images, run at most one denoiser batch, and return the results that finished."""
        self._refill()
        out: list[Event] = []
        while self._ready:
            out.append(self._finish_event(*self._ready.popleft()))
        finished = self._run_overlapped() if self.config.overlap else self._run_one()
        now = time.perf_counter()
        for uid in finished:
            st = self.states[uid]
            req, i = self._owner[uid]
            result = self._result(req, st.policy.outcome(), st.policy.spent, now - self._started.get(uid, now))
            self._drop(uid)
            out.append(self._finish_event(req, i, result))
        self._refill()
        return out

    def _run_one(self) -> list[int]:
        """Schedule, run and apply one batch; the ids of the images that finished."""
        batch = self.sched.schedule()
        if batch is None:
            return self._nothing_to_run()
        self._mark_started(batch)
        return self.sched.update(batch, self.runner.run(batch, self.states))

    def _run_overlapped(self) -> list[int]:
        """As :meth:`_run_one`, with batch k+1 scheduled and prepared while batch k runs on the device thread.

        Batch k+1 is built before batch k's errors are known, from the queries the policies can already
        give (their remaining required queries, then speculative ones): policies replay their rule in
        order, so results are those of the sequential engine; only the evaluations spent may differ."""
        if self._inflight is None:
            batch = self.sched.schedule()
            if batch is None:
                return self._nothing_to_run()
            self._inflight = self._launch(batch, self.runner.prepare(batch, self.states))
        nxt = self.sched.schedule()
        prepared = self.runner.prepare(nxt, self.states) if nxt is not None else None
        batch, future = self._inflight
        self._inflight = None
        errors = future.result()  # a denoiser error surfaces here, as from Runner.run in _run_one
        if nxt is not None:
            self._inflight = self._launch(nxt, prepared)
        return self.sched.update(batch, errors)

    def _launch(self, batch, prepared) -> tuple[Any, Any]:
        # One thread owns the device: it runs the batches in order, while this one prepares the next.
        self._mark_started(batch)
        return batch, device_thread().submit(self.runner.execute, prepared)

    def on_device(self, fn, *args):
        """``fn(*args)`` on the thread that runs this engine's batches: the device thread with overlap (see
        :func:`device_thread`; a warm-up must build its per-thread state there), else the caller's."""
        if not self.config.overlap:
            return fn(*args)
        return device_thread().submit(fn, *args).result()

    def _mark_started(self, batch) -> None:
        now = time.perf_counter()
        for uid in batch.image_ids:
            self._started.setdefault(uid, now)

    def _nothing_to_run(self) -> list[int]:
        finished = self.sched.retire()
        if not finished and self.sched.running:
            # A policy bug (no policy should get here): fail those images, not the whole run.
            finished = self.sched.fail_stalled()
            if not finished:
                raise RuntimeError("scheduler stalled with no in-flight image to fail")
        return finished

    def close(self) -> None:
        """Wait for a batch of this engine still running on the device thread (overlap only). The thread stays,
        for the next run and every other engine (:func:`device_thread`)."""
        if self._inflight is not None:
            # Waits, and drops its error: no step() will read this batch (it holds speculative queries of finished
            # or cancelled images), or close() runs after another error that raising here would hide.
            self._inflight[1].exception()
            self._inflight = None

    def _finish_event(self, req: Request, index: int, result: ClassificationResult) -> Event:
        req.finished += 1
        self.images_done += 1
        if req.done:
            self._close(req)
        return req, index, result

    def _refill(self) -> None:
        """Keep enough images encoded and waiting to fill the in-flight slots (oldest request first)."""
        for req in list(self._requests.values()):
            if req.conditions is None:  # one-class request: answered as pulled, a chunk per step (a generator streams)
                if not req.exhausted and not self._ready:
                    self._pull(req)
            else:
                while not req.exhausted and len(self.sched.waiting) < max(req.chunk, self.sched.max_inflight):
                    self._pull(req)
            if not req.exhausted:
                return  # later requests wait their turn: admission is first come, first served
        # Requests fully pulled and answered (e.g. an empty image list) close here.
        for req in [r for r in self._requests.values() if r.done]:
            self._close(req)

    def _pull(self, req: Request) -> None:
        """Pull, check and encode the next chunk of ``req``'s images."""
        block = req.peeked + list(itertools.islice(req.images, req.chunk - len(req.peeked)))
        # Look one image ahead, so that a request knows it is complete when its last image finishes.
        req.peeked = list(itertools.islice(req.images, 1))
        req.exhausted = not req.peeked
        if not block:
            return
        req.inputs += len(block)
        m = self.model
        pix, ok = [], []
        for i, im in block:
            try:
                px = to_pixels(im, m.image_hw, m.image_channels, name=f"images[{i}]")
            except NonFiniteInput as e:  # NaN/inf pixels: that image fails, the others go on
                self._ready.append((req, i, self._failed(req, f"{e}; it was not scored")))
                continue
            except UserError as e:
                # A file that cannot be read (truncated, not an image, gone) is damaged data: that image
                # fails and a long run goes on (eval --data records the row and resumes past it). An
                # argument of the wrong kind (a bad shape, type or range) is the caller's error: raised.
                if not isinstance(im, (str, Path)):
                    raise
                self._ready.append((req, i, self._failed(req, f"{e}; it was not scored")))
                continue
            if req.conditions is None:  # one candidate: the answer is certain, the model is not run
                self._ready.append((req, i, self._result(req, None, 0, 0.0)))
                continue
            pix.append(px)
            ok.append(i)
        if not pix:
            return
        x0 = m.encode_images(pix).float()
        for i, px, x in zip(ok, pix, x0):
            if not bool(torch.isfinite(x).all()):
                why = "the input image (its encoded latent) holds NaN or inf; it was not scored"
                self._ready.append((req, i, self._failed(req, why)))
                continue
            # Key the noise on the input pixels, not the latent: a VAE's output depends (in the
            # last bits) on how images are batched, and the noise must not.
            key = image_key(px)
            opts = req.options
            pol = opts.policy.make(i, len(req.spec), m.num_timesteps, opts.bank, key, req.conditions.cost)
            uid = next(self._uids)
            self.states[uid] = ImageState(key, x, pol, bank=opts.bank, conditions=req.conditions)
            self._owner[uid] = (req, i)
            self.sched.add(uid, pol)

    # -- results -------------------------------------------------------------------------
    def _result(self, req: Request, outcome, spent: int, seconds: float) -> ClassificationResult:
        o = req.options
        return image_result(
            req.spec.names,
            outcome,
            spent,
            seconds,
            o.policy_name,
            o.temperature,
            o.posterior_floor,
            o.ood_threshold,
            o.abstain_ood,
        )

    def _failed(self, req: Request, message: str) -> ClassificationResult:
        return failed_result(req.spec.names, message, None, 0, 0.0, req.options.policy_name)

    # -- one request, start to end -------------------------------------------------------
    def run(
        self,
        images: Iterable[Any],
        classes: Classes,
        options: RequestOptions | None = None,
        stats: RunStats | None = None,
        progress: Any = None,
        chunk: int = 32,
        on_warning: Any = None,
    ) -> Iterator[tuple[int, ClassificationResult]]:
        """Submit one request and step until it is done, yielding ``(input index, result)`` as images finish.

        ``stats`` (if given) is filled with the run's counters; ``on_warning(sentence)`` hears each
        notice about the prompts (cut at the token limit, unknown words). A run abandoned half-way (the generator
        closed) cancels its request.
        The engine must serve nothing else meanwhile (a shared engine is driven with ``step()``,
        whose events name their request): another request's results would have no one to go to.
        """
        if self._requests or self.sched.has_work:
            raise RuntimeError("Engine.run() needs an engine with no other request; drive a shared one with step()")
        stats = stats if stats is not None else RunStats()
        m = self.model
        stats.backend, stats.dtype = m.backend, str(m.dtype).removeprefix("torch.")
        stats.implementation = m.implementation
        t_setup = time.perf_counter()
        req = self.submit(images, classes, options, chunk=chunk)
        if on_warning is not None:
            for sentence in req.warnings:
                on_warning(sentence)
        stats.setup_seconds = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        before = self._counters()
        try:
            while not req.done:
                for r, i, result in self.step():
                    if r is not req:
                        continue
                    stats.images += 1
                    if progress is not None:
                        progress.update(1)
                    yield i, result
        finally:
            if not req.done:
                self.cancel(req)
            self.close()  # no batch of this run is left running on the device thread (overlap)
            stats.seconds = time.perf_counter() - t0
            rows, padded, batches, buckets = self._counters()
            stats.evaluations, stats.padded_rows, stats.batches = (
                rows - before[0],
                padded - before[1],
                batches - before[2],
            )
            stats.bucket_counts = {k: n - before[3].get(k, 0) for k, n in buckets.items() if n != before[3].get(k, 0)}
            stats.kernels = kernels.active_backend()

    def _counters(self) -> tuple[int, int, int, dict[int, int]]:
        s = self.sched.stats
        return s.rows, s.padded, s.batches, dict(s.bucket_counts)
