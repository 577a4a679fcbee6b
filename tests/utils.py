"""A verbose allclose: on mismatch, say how many, where, and whether NaN/inf disagree."""

from __future__ import annotations

import torch


def assert_verbose_allclose(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, max_print: int = 5
) -> None:
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != {tuple(e.shape)}"
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    bad = (nan_a != nan_e) | (inf_a != inf_e)
    both_finite = ~(nan_a | nan_e | inf_a | inf_e)
    close = torch.isclose(a, e, rtol=rtol, atol=atol)
    bad |= both_finite & ~close
    bad |= (inf_a & inf_e) & (torch.sign(a) != torch.sign(e))
    if bad.any():
        idx = bad.nonzero()[:max_print].tolist()
        lines = [
            f"{int(bad.sum())} of {bad.numel()} elements differ (rtol={rtol}, atol={atol}); NaN mismatches:"
            f" {int((nan_a != nan_e).sum())}, inf mismatches: {int((inf_a != inf_e).sum())}"
        ]
        for i in idx:
            lines.append(f"  at {tuple(i)}: actual {a[tuple(i)].item()!r} expected {e[tuple(i)].item()!r}")
        raise AssertionError("\n".join(lines))
