"""``tuned``: a rule that ``diffcls-fast tune`` chose for a model, read from its output file.

A tuned rule is one of the other policies with fitted options (``{"policy": {"name": "halving", "rounds":
[...], "keep": [...], "t_band": [...]}}``) plus the posterior calibration fitted with it. ``--tuned FILE``
names a ``tune`` output; without it the model folder's ``diffcls.json`` must hold one under ``"tuned"``.
:func:`..options.policy_config` resolves it to the concrete policy before anything runs, so results, logs
and ``eval``'s settings key name the rule that ran, not a path; this spec's hooks delegate to that policy
for code that builds a :class:`PolicyConfig` directly.

The file is read with the standard library only (``diffcls-fast --help`` imports no torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .options import Option, Options, PolicySpec

FORMAT = "diffcls-tuned/1"
RULE_KEY = "tuned"  # where a model folder's diffcls.json keeps its tuned rule


def read_rule(source: str | Path | dict, where: str = "") -> dict:
    """The tuned rule in ``source`` (a ``tune`` output file, a diffcls.json holding one, or the dict itself),
    checked: ``{"policy": {"name": ..., options...}, "calibration": {...}, ...}``. ValueError with one line."""
    where = where or str(source)
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"tuned rule {where}: no such file")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"tuned rule {where}: cannot read it as JSON ({e})") from None
        if isinstance(data, dict) and RULE_KEY in data and "policy" not in data:  # a model's diffcls.json
            data = data[RULE_KEY]
    if not isinstance(data, dict) or not isinstance(data.get("policy"), dict):
        raise ValueError(f"tuned rule {where}: not a diffcls-fast tune output (it needs a 'policy' object)")
    if data.get("format", FORMAT) != FORMAT:
        raise ValueError(f"tuned rule {where}: format {data.get('format')!r}; this version reads {FORMAT}")
    name = data["policy"].get("name")
    from . import REGISTRY  # the registry imports this module

    if name not in REGISTRY or name == TUNED.name:
        known = ", ".join(n for n in REGISTRY if n != TUNED.name)
        raise ValueError(f"tuned rule {where}: policy {name!r} is not one of {known}")
    cal = data.get("calibration")
    if cal is not None:
        t, f = (cal.get("temperature"), cal.get("floor", 0.0)) if isinstance(cal, dict) else (None, None)
        if not (isinstance(t, (int, float)) and t > 0 and isinstance(f, (int, float)) and 0 <= f < 1):
            raise ValueError(f"tuned rule {where}: calibration needs a temperature > 0 and a floor in [0, 1)")
    return data


def concrete(options: Options) -> tuple[str, dict[str, Any]]:
    """The policy name and options that the rule in ``options["tuned"]`` runs."""
    rule = read_rule(_source(options))
    policy = dict(rule["policy"])
    return policy.pop("name"), policy


def _source(options: Options) -> str:
    src = options.get("tuned") or ""
    if not src:
        raise ValueError("--policy tuned needs --tuned FILE (a 'diffcls-fast tune' output), or a model that ships one")
    return src


def _inner(options: Options):
    from . import PolicyConfig

    name, opts = concrete(options)
    cfg = PolicyConfig(name, **opts)
    cfg.validate(None)
    return cfg


def _check(options: Options, T: int | None, n_classes: int) -> None:
    name, opts = concrete(options)
    from . import PolicyConfig

    cfg = PolicyConfig(name, **opts)
    cfg.validate(T, n_classes)


TUNED = PolicySpec(
    name="tuned",
    summary="the rule 'diffcls-fast tune' fitted for the model (--tuned FILE, or the model's own)",
    options=(
        Option(
            "tuned",
            str,
            "",
            "a 'diffcls-fast tune' output",
            settings=False,  # resolved to the concrete policy before anything runs: that one is recorded
            default_doc="the tuned rule in the model's diffcls.json",
        ),
    ),
    make=lambda o, n_classes, T, bank, key, cost: _inner(o).make(0, n_classes, T, bank, key, cost),
    check=_check,
    max_samples=lambda o, T: _inner(o).max_samples(T)[0],
    describe=lambda o: f"tuned({_inner(o).describe()})",
    samples_option="tuned",
)
