"""Each policy declares its options once; the CLI, the server, the settings key and the docs derive from it."""

import argparse

import numpy as np
import pytest

from diffcls_fast.arguments import add_engine_args, policy_options
from diffcls_fast.engine.policies import OPTIONS, POLICY_OPTIONS, REGISTRY, PolicyConfig, used_options
from diffcls_fast.server.limits import HTTPError
from diffcls_fast.server.limits import _policy_options as server_options

# The settings dict ``eval --out`` rows hold: files written before the declarations existed must resume.
LEGACY_KEYS = ["name", "n_grid", "n_samples", "to_keep", "min_scores", "max_scores", "cutoff_pval", "sides", "t_order"]
LEGACY_KEYS += ["rounds", "keep", "t_band"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_engine_args(p)
    return p


def test_every_declared_option_is_a_flag_with_its_default():
    a = _parser().parse_args([])
    assert policy_options(a) == {name: o.default_value() for name, o in OPTIONS.items()}
    assert set(POLICY_OPTIONS) == set(REGISTRY) and a.policy == "ttest"


def test_a_typed_flag_reaches_the_policy_config():
    a = _parser().parse_args(
        ["--policy", "halving", "--rounds", "1", "3", "--keep", "4", "1", "--t-band", "0.1", "0.5"]
    )
    cfg = PolicyConfig(a.policy, **policy_options(a))
    cfg.validate(1000)
    assert cfg.describe() == "halving(rounds=[1, 3], keep=[4, 1], t_band=[0.1, 0.5])"
    assert a.given >= {"policy", "rounds", "keep", "t_band"}


@pytest.mark.parametrize("bad", [["--n-grid", "0"], ["--cutoff-pval", "1"], ["--sides", "3"], ["--t-order", "x"]])
def test_the_cli_refuses_what_the_declaration_refuses(bad):
    with pytest.raises(SystemExit):
        _parser().parse_args(bad)


def test_the_server_accepts_every_default_and_refuses_the_wrong_type():
    defaults = {name: o.default_value() for name, o in OPTIONS.items()}
    assert server_options(defaults) == defaults
    with pytest.raises(HTTPError, match="n_grid must be an int"):
        server_options({"n_grid": 2.5})
    with pytest.raises(HTTPError, match="unknown policy option"):
        server_options({"nope": 1})


def test_the_settings_dict_keeps_its_keys_and_cuts_to_the_policys_options():
    cfg = PolicyConfig("adaptive", n_samples=np.array([5, 20]), to_keep=(2, 1))
    cfg.validate(1000)
    d = cfg.to_dict()
    assert list(d) == LEGACY_KEYS and d["n_samples"] == [5, 20] and d["to_keep"] == [2, 1]
    assert used_options(d) == {"name": "adaptive", "n_samples": [5, 20], "to_keep": [2, 1]}


def test_options_of_other_policies_are_carried_but_checked_for_type():
    PolicyConfig("ttest", n_grid=7).validate(1000)  # another policy's option: carried, changes nothing
    with pytest.raises(ValueError, match="n_grid must be an integer"):
        PolicyConfig("ttest", n_grid=True).validate(1000)
    with pytest.raises(ValueError, match="unknown timestep order"):
        PolicyConfig("halving", t_order="sorted").validate(1000)
    with pytest.raises(TypeError, match="unknown option"):
        PolicyConfig("ttest", nope=1)
    with pytest.raises(ValueError, match="unknown policy"):
        PolicyConfig("nope").validate(1000)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_policy_bounds_its_samples_by_the_option_it_names(name, tmp_path):
    options = {}
    if name == "tuned":  # a rule file: the bound is its policy's
        rule = tmp_path / "rule.json"
        rule.write_text('{"policy": {"name": "halving", "rounds": [2, 5], "keep": [3, 1]}}')
        options = {"tuned": str(rule)}
    cfg = PolicyConfig(name, **options)
    cfg.validate(1000)
    need, flag = cfg.max_samples(1000)
    assert need >= 1 and flag == OPTIONS[REGISTRY[name].samples_option].flag
    assert REGISTRY[name].samples_option in POLICY_OPTIONS[name]
