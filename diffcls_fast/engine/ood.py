"""The out-of-distribution flag: an image whose best class still denoises badly is not like the training data.

A generative classifier knows more than which class wins: how well the winner explains the image. Its mean
error (the label's, over the samples the policy scored) is small for the images the model was trained on, and
far larger for a blank image, a 1x1 image, pixel noise or another dataset's images, whose "most likely" class
is still answered with high confidence by the posterior (which only compares classes).

The rule is fitted per model, policy and loss on the model's train split (``scripts/fit_ood.py``) and shipped
in the model folder's ``diffcls.json``, inside that policy's calibration entry::

    "calibration": {"halving": {..., "out_of_distribution": {"threshold": 0.34, "policy": {...}, ...}}}

``ood_score = winner error / threshold``; an image with a score above 1 is flagged. The threshold is a margin
times the train split's 99th percentile of winner errors: train images were seen in training, so held-out
in-distribution images score higher than they do, and the margin absorbs that gap. The rule applies only to
the policy options and loss it was fitted with (the scale of a mean error depends on which timesteps were
scored); elsewhere the score is None: unknown, not "in distribution".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .policies import PolicyConfig, used_options

if TYPE_CHECKING:
    from ..models.bundle import ModelBundle


def ood_threshold(model: ModelBundle, cfg: PolicyConfig, loss: str) -> float | None:
    """The winner-error threshold of ``model``'s out-of-distribution rule for this policy and loss; None when
    the model ships none for them."""
    entry = (getattr(model, "calibration", None) or {}).get(cfg.name) or {}
    rule = entry.get("out_of_distribution")
    if not rule or entry.get("loss", "l2") != loss:
        return None
    if used_options(dict(rule.get("policy", {}))) != used_options(cfg.to_dict()):
        return None  # fitted with other options (another band, grid or schedule): another error scale
    return float(rule["threshold"])


def ood_score(winner_error: float, threshold: float | None) -> float | None:
    """The image's winner error over the threshold (> 1: out of distribution); None without a rule."""
    if threshold is None or winner_error != winner_error:  # no rule, or no finite error (NaN)
        return None
    return float(winner_error) / threshold
