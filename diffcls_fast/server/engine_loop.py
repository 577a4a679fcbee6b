"""The engine loop: one thread that owns the model and runs one :class:`Engine` for every request.

Request handlers (any thread) hand a :class:`Job` to :meth:`EngineLoop.submit`
and wait on its future; the loop thread admits new jobs into the running
scheduler between denoiser batches, so a request that arrives while others
are being scored joins their batches at the next step. Between steps it also
drops jobs whose deadline passed (504) or whose client went away: their images
leave the scheduler, so no evaluation is spent on them afterwards.

A request that fails (a class list the model cannot tell apart, a bad policy
option) fails alone; an internal error inside a step fails the requests in
flight (500) and the loop goes on with a fresh engine. Stopping
(:meth:`EngineLoop.stop`) refuses new jobs and finishes the accepted ones first.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from .limits import HTTPError
from .metrics import Metrics

log = logging.getLogger("diffcls_fast.server")


@dataclass(eq=False)
class Job:
    """One classify request as the loop sees it; ``future`` resolves to the list of results (or an HTTPError)."""

    pixels: list[Any]  # preprocessed pixel tensors, decoded and checked by the handler
    classes: Any  # names, a ClassSpec, or None (the model's own list)
    options: dict[str, Any]  # DiffusionClassifier.with_options keywords: the request's own options
    timeout: float  # seconds from acceptance
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    accepted_at: float = field(default_factory=time.monotonic)
    results: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    request: Any = None  # the engine's handle, once admitted
    match: tuple | None = (
        None  # (captions, n_grid, shared_noise) for POST /v1/match; the future then resolves to a MatchResult
    )
    plan: Any = None  # the match's MatchPlan, once admitted

    @property
    def deadline(self) -> float:
        return self.accepted_at + self.timeout


class EngineLoop:
    """``load()`` builds the classifier (in the loop thread: loading takes seconds and the HTTP server answers /healthz
    meanwhile)."""

    def __init__(
        self,
        load: Callable[[], Any],
        metrics: Metrics,
        max_queue: int = 256,
        warmup: bool = True,
        on_load_failed: Callable[[str], None] | None = None,
    ):
        self._load = load
        self._on_load_failed = on_load_failed
        self.metrics = metrics
        self.max_queue = max_queue
        self.warmup = warmup
        self.clf = None
        self.engine = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._cv = threading.Condition()
        self._inbox: list[Job] = []
        self._cancels: list[Job] = []
        self._live: dict[int, Job] = {}  # engine request id -> job
        # Every job accepted and not yet answered, wherever it is: the inbox, being admitted (encoding
        # its prompts can take a while, outside the lock), or live. --max-queue counts these.
        self._accepted: set[Job] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="diffcls-engine-loop", daemon=True)
        self.warmup_seconds = 0.0

    # -- the handlers' side ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs accepted and not yet answered."""
        with self._cv:
            return len(self._accepted)

    def submit(self, job: Job) -> concurrent.futures.Future:
        with self._cv:
            if self._stopping:
                raise HTTPError(503, "shutting_down", "the server is shutting down", {"Retry-After": "5"})
            if not self.ready.is_set():
                raise HTTPError(
                    503,
                    "not_ready",
                    "the model is still loading; retry shortly (GET /healthz says when it is ready)",
                    {"Retry-After": "2"},
                )
            n = len(self._accepted)
            if n >= self.max_queue:
                raise HTTPError(
                    429,
                    "queue_full",
                    f"the server's queue is full ({n} requests waiting or in flight); retry later",
                    {"Retry-After": str(self._retry_after(n))},
                )
            self._inbox.append(job)
            self._accepted.add(job)
            self._cv.notify()
        return job.future

    def _retry_after(self, n: int) -> int:
        """Seconds until the queue has room, roughly: its images at the recent evaluation rate (1 s at least)."""
        eps = self.metrics.evals_per_second()
        per_image = 250.0  # a digit with the default t-test; the rate matters more than the guess
        return max(1, min(60, round(n * per_image / eps))) if eps > 0 else 1

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job (between steps)."""
        with self._cv:
            self._cancels.append(job)
            self._cv.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the accepted ones, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the loop thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.clf = self._load()
            self.engine = self.clf.engine()
            if self.warmup:
                self._warm_up()
        except Exception as e:  # the model does not load: /healthz says why, requests get 503
            self.load_error = f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e)
            with self._cv:
                self._stopping = True
            if self._on_load_failed is not None:
                self._on_load_failed(self.load_error)  # `serve` exits non-zero: a server that cannot serve
            else:
                log.error("diffcls-fast: error: %s", self.load_error)
            return
        self.metrics.ready = 1
        self.ready.set()
        last = (0, 0, 0, 0)
        while True:
            with self._cv:
                new, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
                if not new and not cancels and not self.engine.has_work and not self._live:
                    if self._stopping:
                        return
                    self._cv.wait(timeout=0.5)
                    continue
            try:
                last = self._iteration(new, cancels, last)
            except Exception as e:  # a bug anywhere in an iteration: fail what is in flight, keep serving
                log.exception("engine loop iteration failed")
                for job in list(self._live.values()):
                    self._finish(job, HTTPError(500, "internal", f"internal error: {type(e).__name__}: {e}"))
                self.engine.close()  # a batch it launched ahead (overlap) finishes before the new engine's first
                self.engine = self.clf.engine()
                last = (0, 0, 0, 0)
                self.metrics.observe_engine(
                    0, 0, 0, 0, queued=self.pending, waiting=0, inflight=0
                )  # the gauges say the reset

    def _iteration(self, new: list[Job], cancels: list[Job], last: tuple) -> tuple:
        """Admit, drop (cancelled, past deadline), run one step, answer the finished; the engine counters after it."""
        for job in new:
            self._admit(job)
        for job in cancels:  # never a success: its results are incomplete
            self._drop(job, HTTPError(499, "client_closed", "the client closed the connection"))
        now = time.monotonic()
        for job in [j for j in self._live.values() if j.deadline <= now]:
            self._drop(
                job,
                HTTPError(
                    504,
                    "deadline",
                    f"the request's deadline of {job.timeout:g} s passed before it was answered; its work was dropped",
                ),
            )
        if not self.engine.has_work:
            for job in list(self._live.values()):  # a safety net: no live job can be left without work
                self._finish(
                    job,
                    (
                        None
                        if job.request.done
                        else HTTPError(500, "internal", "internal error: the engine has no work left for this request")
                    ),
                )
        else:
            events = self.engine.step()
            done = []
            for req, i, result in events:
                job = self._live.get(req.id)
                if job is not None:
                    job.results[i] = result
                    if req.done:
                        done.append(job)
            for job in done:  # after the whole step: a request's last events may come together
                self._finish(job, None)
        s = self.engine.stats
        cur = (s.rows, s.padded, s.batches, self.engine.images_done)
        self.metrics.observe_engine(
            *(c - p for c, p in zip(cur, last)),
            queued=self.pending,
            waiting=self.engine.waiting_images,
            inflight=self.engine.inflight_images,
        )
        return cur

    def _admit(self, job: Job) -> None:
        if job.future.done():  # cancelled before admission
            self._finish(job, None)
            return
        try:
            view = self.clf.with_options(**job.options)
            options, classes = view.options, job.classes
            if job.match is not None:
                job.plan = _match_plan(view, job.match, len(job.pixels))
                options, classes = job.plan.options(options), job.plan.spec
            req = self.engine.submit(job.pixels, classes, options=options)
        except (UserError, TypeError, ValueError) as e:
            self._finish(job, HTTPError(400, "bad_request", str(e)))
            return
        except Exception as e:  # e.g. out of memory encoding its prompts: this job fails, the loop goes on
            log.exception("admitting a request failed")
            self._finish(job, HTTPError(500, "internal", f"internal error: {type(e).__name__}: {e}"))
            return
        job.request = req
        job.warnings = req.warnings
        job.results = [None] * len(job.pixels)
        self._live[req.id] = job

    def _drop(self, job: Job, error: HTTPError | None) -> None:
        if job.request is not None and self._live.get(job.request.id) is job:  # not a job of an engine since replaced
            self.engine.cancel(job.request)
        self._finish(job, error)

    def _finish(self, job: Job, error: HTTPError | None) -> None:
        with self._cv:
            self._accepted.discard(job)
        if job.request is not None and self._live.get(job.request.id) is job:
            del self._live[job.request.id]
        # A handler may cancel the future from its own thread at any moment (its client went away):
        # set_running_or_notify_cancel claims it first, so no set_result can race that cancel.
        if job.future.done() or not job.future.set_running_or_notify_cancel():
            return
        if error is None:
            try:
                value = job.results if job.match is None else job.plan.result(0, job.results)
            except Exception as e:  # a bug in assembling the answer must not end the loop thread
                log.exception("assembling a response failed")
                error = HTTPError(500, "internal", f"internal error: {type(e).__name__}: {e}")
            else:
                job.future.set_result(value)
                return
        job.future.set_exception(error)

    def _warm_up(self) -> None:
        """One denoiser call per bucket size (on a GPU: kernels, graphs and engines are built per shape) and
        the model's own class list encoded (its embeddings cached), so the first request pays neither."""
        import torch

        t0 = time.perf_counter()
        clf, m = self.clf, self.clf.model
        if m.class_names:
            try:
                self.engine.encode_classes(clf.class_spec(None))
            except UserError as e:
                log.warning("diffcls-fast: warning: the model's own class list: %s", e)
        cond = None
        if m.cond_kind == "text":
            cond = m.encode_prompts(["warm-up"])

        @torch.no_grad()
        def warm_up() -> None:
            for b in clf.buckets:
                x = torch.zeros((b, *m.latent_shape), dtype=m.dtype, device=m.device)
                t = torch.full((b,), m.num_timesteps // 2, dtype=torch.long, device=m.device)
                c = (
                    cond.expand(b, *cond.shape[1:])
                    if cond is not None
                    else torch.zeros((b,), dtype=torch.long, device=m.device)
                )
                m.denoise(x, t, c.contiguous())

        # On the thread that will run the batches (with overlap, the engine's device thread): what a backend
        # builds per thread (torch.compile's CUDA graphs) is then built here, not again by the first request.
        self.engine.on_device(warm_up)
        self.warmup_seconds = time.perf_counter() - t0


def _match_plan(clf, match: tuple, n_images: int):
    """One group of ``iter_match_groups``: the captions as classes, each image scoring all of them
    exhaustively on the grid (the server's tests check the answer equals ``clf.match``)."""
    from ..engine.match import MatchPlan, check_n_grid

    captions, n_grid, shared = match
    n_grid = check_n_grid(clf.policy_cfg.n_grid if n_grid is None else n_grid, clf.model.num_timesteps, clf.options)
    return MatchPlan.build([captions], [n_images], n_grid, shared)
