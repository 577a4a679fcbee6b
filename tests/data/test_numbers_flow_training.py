"""``scripts/train_bundled.py --model numbers-flow``: two steps write the numbers layout with a FlowMatch scheduler,
which loads as a flow model (natively, as numbers does) and classifies the numbers split end to end; the network
trains on the timestep values the loader gives it; a resumed run continues exactly where it stopped."""

import json

import torch

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.cli import main
from diffcls_fast.data import numbers
from diffcls_fast.evaluate import load_eval_split

from ..models.helpers import FAST
from .conftest import check_resume_is_exact, train


def test_two_steps_give_a_folder_that_loads_as_flow(train_bundled, tmp_path, monkeypatch, capsys):
    seen = []  # the timestep values the UNet is trained on
    build = train_bundled.build_numbers_flow

    def recording(task):
        tokenizer, nets, scheduler = build(task)
        nets["unet"].register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
        return tokenizer, nets, scheduler

    monkeypatch.setattr(train_bundled, "build_numbers_flow", recording)
    out = tmp_path / "numbers-flow"
    train(train_bundled, "numbers-flow", tmp_path / "run", out, 2)
    monkeypatch.undo()

    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["_class_name"], sched["shift"], sched["num_train_timesteps"]) == (
        "FlowMatchEulerDiscreteScheduler",
        1.0,
        1000,
    )
    meta = json.loads((out / "diffcls.json").read_text())
    assert (
        meta["name"] == "numbers-flow"
        and meta["training"]["steps"] == 2
        and "rectified flow" in meta["training"]["objective"]
    )
    m = load_model(str(out), device="cpu")
    assert (m.prediction_type, m.implementation, m.latent_shape) == ("flow", "native", (1, 8, 16))
    torch.testing.assert_close(m.sigmas, torch.arange(1, 1001, dtype=torch.float64) / 1000)
    assert m.class_names == numbers.CLASS_NAMES and m.prompt_template == "the digits {}"
    # trained on σ x 1000 of the loader's table: the integers 1..1000 at shift 1
    trained_on = torch.cat(seen)
    assert len(seen) == 2 and trained_on.dtype == torch.float32 and trained_on.numel() == 8
    assert set(trained_on.tolist()) <= set(m.raw_module.timestep_of.tolist())
    # the native modules and diffusers' give the same velocity
    lib = load_model(str(out), device="cpu", implementation="diffusers")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 1, 8, 16, generator=g), torch.tensor([0, 499, 999])
    cond = m.encode_prompts(["the digits three seven"] * 3)
    torch.testing.assert_close(m.denoise(x, t, cond), lib.denoise(x, t, cond), atol=1e-4, rtol=1e-4)

    images, labels, _ = numbers.load_split("heldout")
    (res,) = DiffusionClassifier(m, "exhaustive", n_grid=2, use_cache=False).classify(
        [images[0]], [numbers.CLASS_NAMES[labels[0]], "one six"]
    )
    assert res.evaluations == 4
    # eval --model numbers-flow reads the numbers held-out split
    from diffcls_fast.models import bundled

    monkeypatch.setitem(bundled.BUNDLED, "numbers-flow", out)
    rows = tmp_path / "rows.jsonl"
    argv = ["eval", "--model", "numbers-flow", "--split", "heldout", "--limit", "2", "--out", str(rows), "--json"]
    assert main([*argv, *FAST]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["images"] == 2
    ids = [json.loads(line)["id"] for line in rows.read_text().splitlines()]
    assert ids == load_eval_split("numbers", "heldout")[3][:2]


def test_a_resumed_run_matches_an_uninterrupted_one(train_bundled, tmp_path, monkeypatch):
    check_resume_is_exact(train_bundled, "numbers-flow", tmp_path, monkeypatch)


def test_numbers_flow_is_evaluated_on_the_numbers_data():
    from diffcls_fast.swap_eval import load_swap_set

    for split in ("heldout", "train"):
        assert load_eval_split("numbers-flow", split)[3] == load_eval_split("numbers", split)[3]
    assert [g["id"] for g in load_swap_set("numbers-flow")] == [g["id"] for g in load_swap_set("numbers")]
