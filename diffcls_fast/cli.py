"""``diffcls-fast``: classify images, evaluate on a bundled split, export, benchmark.

Every user error (bad path, bad CSV, unknown backend, bad option value...) is printed
as one line on stderr with exit code 2, and every argument and input file is checked
before a model is loaded. A bug prints one line (exception type and message) and a
hint to re-run with ``--debug`` (or ``DIFFCLS_DEBUG=1``) for the traceback; exit code 1.
Warnings (e.g. words the tokenizer does not know) are one line each on stderr.
``classify`` and ``eval`` exit with 1 when some image failed (a non-finite score):
every other image is still reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .arguments import Given, add_engine_args
from .build import check_engine_args, classifier_from_args
from .engine.policies.options import positive_float, positive_int
from .errors import DiffclsWarning, UserError
from .output import result_line


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (``diffcls-fast: error: ...``, exit 2) like every other user error."""

    def error(self, message: str):
        self.exit(2, f"diffcls-fast: error: {message} (see '{self.prog} --help')\n")


def _progress(total: int, desc: str, leave: bool = True):
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing when stderr is a pipe or file.
    return tqdm(total=total, desc=desc, unit="img", disable=None, file=sys.stderr, dynamic_ncols=True, leave=leave)


def cmd_classify(a: argparse.Namespace) -> int:
    if a.server is not None:  # a warm server does the work; this process imports no torch
        from .client import classify_cli

        return classify_cli(a)
    from .engine import parse_class_list, read_prompts_csv
    from .images import check_image_file
    from .threads import one_shot_threads, restore_for_large_network

    # Fail fast: every argument and input file is checked before the model loads.
    if a.classes is not None and a.prompts is not None:
        raise UserError("give --classes or --prompts, not both")
    noise = check_engine_args(a)
    if a.prompts:
        from .engine.options import check_scheduler_args

        classes = read_prompts_csv(a.prompts).check_fits(
            max(check_scheduler_args(a.batch_size, None, a.max_inflight, a.speculate))
        )
    elif a.classes is not None:
        parse_class_list(a.classes)  # the names' checks; the model's prompt template is applied later
        classes = a.classes
    else:
        classes = None
    for im in a.images:
        check_image_file(im)
    before = one_shot_threads(len(a.images))
    clf = classifier_from_args(a, noise)
    restore_for_large_network(clf.model, before)
    spec = clf.class_spec(classes)
    if clf.model.random_weights:
        print(f"note: {clf.model.describe()}", file=sys.stderr)
    # the bar goes when the run ends (leave=False): the results printed after it are the output
    with _progress(len(a.images), "classify", leave=False) as bar:
        results = clf.classify(a.images, spec, progress=bar)
    st = clf.last_stats
    for path, r in zip(a.images, results):
        if a.json:
            print(json.dumps({"image": str(path), **r.to_dict(), "random_weights": clf.model.random_weights}))
        else:
            print(result_line(str(path), r.to_dict(top_k=5)))
    if not a.json:
        print(
            f"# {clf.model.describe()}, {clf.policy_cfg.describe()}, kernels {st.kernels}; {st.evaluations} evals in"
            f" {st.seconds:.2f} s ({st.evals_per_second:.0f} evals/s), batch fill {st.batch_fill:.3f}",
            file=sys.stderr,
        )
    failed = sum(r.error is not None for r in results)
    if failed:  # a failed image (NaN/inf) is not a user error
        print(f"diffcls-fast: {failed} of {len(results)} images failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .server import require_serve

    require_serve()  # a missing extra is one line, before the model loads
    from .server.app import serve
    from .server.limits import Limits

    noise = check_engine_args(a)
    from .engine.options import check_scheduler_args
    from .models.locate import check_model_arg

    check_model_arg(a.model)  # before the port is bound: a bad folder is one line and exit 2, not a server
    check_scheduler_args(a.batch_size, None, a.max_inflight, a.speculate)
    if not 0 <= a.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {a.port}")
    if a.request_timeout > a.max_timeout:
        raise UserError(f"--request-timeout ({a.request_timeout:g} s) is over --max-timeout ({a.max_timeout:g} s)")
    limits = Limits(
        max_body_bytes=a.max_body_bytes,
        max_image_pixels=a.max_image_pixels,
        max_images=a.max_images,
        max_classes=a.max_classes,
        max_prompts=a.max_prompts,
        max_queue=a.max_queue,
        default_timeout=a.request_timeout,
        max_timeout=a.max_timeout,
    )
    serve(
        lambda: classifier_from_args(a, noise),
        host=a.host,
        port=a.port,
        limits=limits,
        api_key=a.api_key,
        warmup=not a.no_warmup,
        graceful_timeout=a.graceful_timeout,
    )
    return 0


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it)",
    )
    g.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    g.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1/* and /metrics (default: $DIFFCLS_API_KEY; none: open)",
    )
    g.add_argument(
        "--max-queue",
        type=positive_int,
        default=256,
        help="requests accepted and not yet answered; more get 429 (default: 256)",
    )
    g.add_argument("--max-images", type=positive_int, default=64, help="images per request (default: 64)")
    g.add_argument("--max-classes", type=positive_int, default=1000, help="classes per request (default: 1000)")
    g.add_argument(
        "--max-prompts",
        type=positive_int,
        default=8000,
        help=(
            "prompts per request, each class's counted (a prompt ensemble costs a denoiser row per prompt; default:"
            " 8000)"
        ),
    )
    g.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=4096 * 4096,
        help="width x height of one image (default: 16777216)",
    )
    g.add_argument("--max-body-bytes", type=positive_int, default=16 << 20, help="request body size (default: 16 MiB)")
    g.add_argument(
        "--request-timeout",
        type=positive_float,
        default=60.0,
        help="default deadline of a request, seconds (504 after it; default: 60)",
    )
    g.add_argument(
        "--max-timeout",
        type=positive_float,
        default=600.0,
        help="the largest deadline a request may ask for (default: 600)",
    )
    g.add_argument(
        "--graceful-timeout",
        type=positive_float,
        default=None,
        help="on SIGTERM, wait at most this long for requests in flight (default: until they finish)",
    )
    g.add_argument("--no-warmup", action="store_true", help="ready without warming up (the first requests pay for it)")


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluate import FAILED_RULE, run_eval
    from .shard import apply_scale_out

    apply_scale_out(a)  # --shard / torchrun / --ray: checked first, sets the shard's --out part and device
    if getattr(a, "task", "classify") != "swap" and a.shared_noise:
        raise UserError(
            "--shared-noise is an option of --task swap (and of match); a classify eval draws each image's own noise"
        )
    if getattr(a, "task", "classify") == "swap":
        if "policy" in a.given and a.policy != "exhaustive":
            raise UserError(
                "eval --task swap scores every caption at every grid point (no pruning), as match does; set the grid"
                " with --n-grid, not --policy"
            )
        a.policy = "exhaustive"  # what the swap eval runs: the noise file and option checks below must be about it
    noise = check_engine_args(a)  # run_eval checks the data, --prompts and --out, then loads the model
    if getattr(a, "task", "classify") == "swap":
        return cmd_eval_swap(a, noise)
    if a.ray:
        from .integrations.ray import RayClassifier, driver_output

        with driver_output():  # Ray's own messages go to stderr; Ray is left before the summary is printed
            summary = run_eval(a, lambda args: RayClassifier(args, noise), _progress)
    else:
        summary = run_eval(a, lambda args: classifier_from_args(args, noise), _progress)
    if a.json:
        print(json.dumps(summary))
    else:
        print(format_eval_summary(summary))
    if summary["failed"]:
        print(
            f"diffcls-fast: {summary['failed']} of {summary['images']} images failed, e.g. {summary['first_error']}"
            f" ({FAILED_RULE})",
            file=sys.stderr,
        )
    return 1 if summary["failed"] else 0


def format_eval_summary(s: dict) -> str:
    """``eval``'s one summary line: what was measured, said plainly when nothing was scored in this run."""
    if s.get("note"):  # an empty shard
        return f"{s['note']}; nothing to do"
    head = (
        f"accuracy {s['accuracy']:.4f} on {s['images']} images ({s['split'] or s['data']}), ECE {s['ece']:.4f}, NLL"
        f" {s['nll']:.4f}, {s['evals_per_image']:.1f} evals/image ({s['evals_spent_per_image']:.1f} spent)"
    )
    if s.get("out_of_distribution"):
        head += f", {s['out_of_distribution']} flagged out of distribution"
    if not s["scored"]:
        return (
            f"{head}; all {s['images']} rows resumed from --out (nothing scored in this run)"
            f" [{s['backend']}, {s.get('implementation')}]"
        )
    resumed = f", {s['resumed']} resumed from --out" if s["resumed"] else ""
    return (
        f"{head}, {s['seconds']:.1f} s, batch fill {s['batch_fill']:.3f}, {s['evals_per_second']:.0f} evals/s"
        f"{resumed} [{s['backend']}, {s.get('implementation')}, kernels {s['kernels']}]"
    )


def cmd_tune(a: argparse.Namespace) -> int:
    from .tune.run import check_tune_args, format_tune_report, run_tune

    check_tune_args(a)
    check_engine_args(a)
    result = run_tune(a, classifier_from_args, _progress)
    if a.json:
        print(json.dumps(result))
    else:
        print(format_tune_report(result))
    return 0


def cmd_merge(a: argparse.Namespace) -> int:
    from .merge import format_summary, merge_parts

    summary = merge_parts(a.out, a.parts, overwrite=a.overwrite)
    print(json.dumps(summary) if a.json else format_summary(summary))
    if summary["failed"]:
        from .evaluate import FAILED_RULE

        print(
            f"diffcls-fast: {summary['failed']} of {summary['images']} images failed, e.g. {summary['first_error']}"
            f" ({FAILED_RULE})",
            file=sys.stderr,
        )
    return 1 if summary["failed"] else 0


def _add_scale_out_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out (see docs/scale-out.md)")
    g.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help=(
            "evaluate shard I of N (0-based, interleaved); --out becomes OUT.shard-I-of-N.jsonl. Under torchrun:"
            " RANK/WORLD_SIZE"
        ),
    )
    g.add_argument(
        "--ray", action="store_true", help="score on Ray Data actors (a local Ray instance, or --ray-address)"
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join, e.g. auto or HEAD:6379 (default: $RAY_ADDRESS, else a new local instance)",
    )
    g.add_argument(
        "--ray-workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="actors, each with its own model (default: 1)",
    )
    g.add_argument(
        "--ray-gpus",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per actor (default: 1 if the cluster has GPUs, else 0)",
    )
    g.add_argument("--ray-cpus", type=positive_float, default=None, metavar="C", help="CPUs per actor (default: 1)")
    g.add_argument(
        "--ray-max-restarts",
        type=int,
        default=None,
        metavar="K",
        help="restarts of a dead actor, and retries of its batch (default: 3)",
    )


def cmd_match(a: argparse.Namespace) -> int:
    from .engine.match import check_captions, format_matrix
    from .images import check_image_file

    if a.captions is None:
        raise UserError(
            'match needs --captions, e.g. --model numbers --captions "the digits one two" "the digits two one"'
        )
    captions = check_captions(a.captions)
    if a.policy != "exhaustive":
        raise UserError(
            "match scores every caption at every grid point (no pruning); set the grid with --n-grid, not --policy"
        )
    for im in a.images:  # fail fast, before loading the model
        check_image_file(im)
    noise = check_engine_args(a)
    clf = classifier_from_args(a, noise)
    if clf.model.random_weights:
        print(f"note: {clf.model.describe()}", file=sys.stderr)
    with _progress(len(a.images), "match", leave=False) as bar:
        res = clf.match(a.images, captions, n_grid=a.n_grid, shared_noise=a.shared_noise, progress=bar)
    if a.json:
        print(
            json.dumps(
                {
                    "images": [str(p) for p in a.images],
                    **res.to_dict(),
                    "model": clf.model.name,
                    "random_weights": clf.model.random_weights,
                }
            )
        )
    else:
        print("\n".join(format_matrix(res, [str(p) for p in a.images])))
        if res.errors.shape == (2, 2) and not res.failed:
            w = res.winoground()
            print(
                f"winoground: text score {int(w.text)}, image score {int(w.image)}, group score {int(w.group)} "
                " (caption j describes image j; s = -mean error)"
            )
        st = clf.last_stats
        noise = "shared across images" if res.shared_noise else "per image"
        print(
            f"# {clf.model.describe()}, {res.policy}, noise {noise}; {st.evaluations} evals in {res.seconds:.2f} s,"
            f" batch fill {st.batch_fill:.3f}",
            file=sys.stderr,
        )
    if res.failed:  # a failed image (NaN/inf) is not a user error
        print(f"diffcls-fast: {res.failed} of {len(res.failures)} images failed", file=sys.stderr)
    return 1 if res.failed else 0


def cmd_eval_swap(a: argparse.Namespace, noise=None) -> int:
    from .swap_eval import format_summary, run_swap_eval

    summary = run_swap_eval(a, lambda args: classifier_from_args(args, noise), _progress)
    print(json.dumps(summary) if a.json else format_summary(summary))
    return 0


def _add_match_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shared-noise",
        action="store_true",
        help="share the (t, eps) samples across images too (default: per image, as classify)",
    )


def cmd_export(a: argparse.Namespace) -> int:
    from .export.onnx_export import export_onnx, writable_dir
    from .models import load_model

    if a.batch_sizes is None:
        a.batch_sizes = "8,16,32,64,128,256" if a.format == "aoti" else "8,32,128"
    try:
        sizes = sorted({int(x) for x in a.batch_sizes.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--batch-sizes must be comma-separated integers, got {a.batch_sizes!r}") from None
    if not sizes or sizes[0] < 1:
        raise UserError("--batch-sizes needs at least one positive size")
    if a.format == "aoti":
        from .export.aoti_cli import cmd_export_aoti

        return cmd_export_aoti(a, sizes)
    aoti_only = [o for o in ("classes", "prompts", "noise_path", "noise_rows", "seed") if o in a.given]
    if aoti_only:
        opts = ", ".join("--" + o.replace("_", "-") for o in aoti_only)
        raise UserError(
            f"{opts}: only --format aoti writes a condition table and noise; --format {a.format} exports the denoiser"
            " alone"
        )
    if a.format == "tensorrt":  # before the model loads and the ONNX export runs
        from .export.tensorrt_backend import require_tensorrt

        require_tensorrt()
    writable_dir(a.out)  # before the model loads
    model = load_model(a.model, device=a.device, dtype=a.dtype, implementation="diffusers")  # what export traces
    art = export_onnx(model, a.out, force=a.force)
    status = "cached (valid, not re-exported)" if art.cached else f"exported in {art.seconds:.1f} s"
    err = "n/a" if art.max_abs_error is None else f"{art.max_abs_error:.2e}"
    print(f"onnx: {art.path} [{status}], onnx.checker OK, max |onnxruntime - torch| = {err}")
    if a.format == "tensorrt":
        from .export.tensorrt_backend import build_engine, engine_paths, require_tensorrt

        trt = require_tensorrt()
        plan, timing = engine_paths(Path(a.out), model, art.spec, sizes, trt.__version__)
        if plan.is_file() and not a.force:
            print(f"tensorrt: {plan} [cached]")
        else:
            build_engine(art.path, art.spec, sizes, plan, timing)
            print(f"tensorrt: {plan} [built; profiles for batch sizes {sizes}; timing cache {timing}]")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    try:
        from bench.throughput import main as bench_main
    except ImportError:
        raise UserError(
            "the benchmarks live in the source checkout's bench/; run diffcls-fast bench from the repository root"
        ) from None
    bench_main(a.args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="diffcls-fast", description="Zero-shot image classification with conditional diffusion models.")
    ap.add_argument("--version", action="version", version=f"diffcls-fast {__version__}")
    ap.add_argument(
        "--debug", action="store_true", help="on an internal error, print the full traceback (also: DIFFCLS_DEBUG=1)"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("classify", help="classify image files")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument(
        "--classes",
        default=None,
        help='comma-separated class names, e.g. "zero,one,two" (default: the model\'s own list)',
    )
    p.add_argument(
        "--prompts",
        default=None,
        help="CSV with columns classidx,prompt[,classname]; several rows per class form an ensemble",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help=(
            "send the images to a running 'diffcls-fast serve' at URL (same output; the server's model and engine"
            " settings)"
        ),
    )
    p.add_argument("--api-key", default=None, help="with --server: the server's API key (default: $DIFFCLS_API_KEY)")
    add_engine_args(p)
    p.set_defaults(fn=cmd_classify)

    p = sub.add_parser("serve", help="a warm HTTP classification server (needs the serve extra)")
    _add_serve_args(p)
    add_engine_args(p)
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("eval", help="accuracy on a bundled data split")
    p.add_argument(
        "--split",
        default="heldout",
        choices=["heldout", "train", "tune"],
        help="bundled split of digits, numbers, numbers-flow, numbers3 or fashion (fashion also has tune)"
        " (default: heldout)",
    )
    p.add_argument(
        "--data", default=None, help="evaluate on an image folder DIR/<class>/<image> instead of the bundled split"
    )
    p.add_argument(
        "--prompts", default=None, help="CSV classidx,prompt,classname whose class names match the data's classes"
    )
    p.add_argument("--limit", type=positive_int, default=None, help="first N images of the split only")
    p.add_argument("--out", default=None, help="append one JSON line per image to this file; a rerun resumes from it")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument(
        "--task",
        default="classify",
        choices=["classify", "swap"],
        help="classify: accuracy; swap: Winoground text/image/group scores on the model's swap set (default: classify)",
    )
    _add_match_args(p)
    _add_scale_out_args(p)
    add_engine_args(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser(
        "merge", help="join the --out parts of a sharded eval into one file, checking settings, overlaps and gaps"
    )
    p.add_argument("out", help="the merged JSONL to write (rows in split order)")
    p.add_argument("parts", nargs="+", help="the shards' --out files (OUT.shard-I-of-N.jsonl ...)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (the keys of eval --json)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT even when it is not an earlier merge of the same run (default: refuse)",
    )
    p.set_defaults(fn=cmd_merge)

    p = sub.add_parser(
        "tune",
        help="fit a timestep band, pruning schedule and calibration on labelled images (--policy tuned --tuned FILE)",
    )
    p.add_argument(
        "--split",
        default="train",
        choices=["train", "tune", "heldout"],
        help="bundled split: train (the model's training images), tune (fashion: unseen, not held out); never heldout",
    )
    p.add_argument("--data", default=None, help="tune on an image folder DIR/<class>/<image> instead")
    p.add_argument("--limit", type=positive_int, default=200, help="first N tuning images (default: 200)")
    p.add_argument("--grid", type=positive_int, default=25, help="timestep grid the tables score (default: 25)")
    p.add_argument("--budget", type=positive_float, default=None, help="most evaluations per image a rule may cost")
    p.add_argument(
        "--max-loss",
        type=float,
        default=0.5,
        help="accuracy points the chosen rule may lose, cross-validated, for being cheaper (default: 0.5)",
    )
    p.add_argument("--repeats", type=positive_int, default=3, help="sample orders per image in a replay (default: 3)")
    p.add_argument("--folds", type=positive_int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument(
        "--out", default=None, help="the rule file to write (default: tuned-MODEL.json); FILE.tables/ resumes"
    )
    p.add_argument("--tables", default=None, help="folder of the score tables' parts (default: OUT.tables)")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    add_engine_args(p)
    p.set_defaults(fn=cmd_tune)

    p = sub.add_parser("match", help="image-text matching: the mean error of every (image, caption) pair")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument(
        "--captions",
        nargs="*",
        default=None,
        help='captions (full prompts), e.g. --captions "the digits one two" "the digits two one"',
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (the matrix and, for 2x2, the Winoground scores)"
    )
    _add_match_args(p)
    add_engine_args(p)
    p.set_defaults(fn=cmd_match, policy="exhaustive")

    p = sub.add_parser(
        "export",
        help="export the denoiser to ONNX (and build a TensorRT engine), or an AOTInductor folder for diffcls-run",
    )
    p.add_argument("--model", default="digits", help="bundled model, preset:NAME or local folder (default: digits)")
    p.add_argument("--format", default="onnx", choices=["onnx", "tensorrt", "aoti"])
    p.add_argument(
        "--batch-sizes",
        default=None,
        help=(
            "TensorRT profile batch sizes (default: 8,32,128); aoti: the largest is the packages' largest batch"
            " (default: 8,16,32,64,128,256)"
        ),
    )
    p.add_argument(
        "--classes",
        action=Given,
        default=None,
        help="aoti: comma-separated class names for the condition table (default: the model's own list)",
    )
    p.add_argument(
        "--prompts", action=Given, default=None, help="aoti: CSV classidx,prompt[,classname] for the condition table"
    )
    p.add_argument(
        "--noise-path",
        action=Given,
        default=None,
        help="aoti: the saved noise tensor the runner uses (default: a fresh one of --noise-rows rows, seed --seed)",
    )
    p.add_argument(
        "--noise-rows",
        action=Given,
        type=positive_int,
        default=2000,
        help="aoti: rows of the generated noise (default: 2000, the t-test's max samples)",
    )
    p.add_argument("--seed", action=Given, type=int, default=0, help="aoti: seed of the generated noise (default: 0)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help=(
            "aoti: compiled packages are cached here (shared with --backend aoti; default: $DIFFCLS_CACHE_DIR or"
            " ~/.cache/diffcls-fast)"
        ),
    )
    p.add_argument("--out", default="exported", help="output folder (default: ./exported)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--force", action="store_true", help="re-export even if a valid cached artifact exists")
    p.set_defaults(given=set())
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser(
        "bench", help="engine vs the papers' reference loop (runs bench/throughput.py; from the repo root)"
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for bench/throughput.py (--limit N, --quick, ...)")
    p.set_defaults(fn=cmd_bench)
    for name, p in sub.choices.items():
        if name == "bench":
            continue  # its REMAINDER belongs to bench/throughput.py
        # also after the subcommand; SUPPRESS keeps a top-level --debug from being reset
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="on an internal error, print the full traceback (also: DIFFCLS_DEBUG=1)",
        )
    return ap


def _debug_wanted(a: argparse.Namespace) -> bool:
    return bool(getattr(a, "debug", False)) or os.environ.get("DIFFCLS_DEBUG", "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


def _one_line_warnings():
    """Show the engine's warnings as ``diffcls-fast: warning: ...`` (one line); others as Python does."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DiffclsWarning):
            print(f"diffcls-fast: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings()
            warnings.simplefilter("always", DiffclsWarning)
            return a.fn(a)
    except UserError as e:
        print(f"diffcls-fast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffcls-fast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # a bug: one line and a hint, or the whole traceback with --debug
        if _debug_wanted(a):
            import traceback

            traceback.print_exc()
        else:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else "(no message)"
            print(f"diffcls-fast: internal error: {type(e).__name__}: {msg}", file=sys.stderr)
            print(
                "diffcls-fast: this is a bug; re-run with --debug (or DIFFCLS_DEBUG=1) for the full traceback",
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
