"""The text line ``classify`` prints per image, from a result's dict (``ClassificationResult.to_dict()``, or the
server's JSON for ``classify --server``): one formatter, so the local and remote outputs cannot drift. Torch-free."""

from __future__ import annotations


def result_line(image: str, r: dict) -> str:
    """``IMAGE: LABEL  [top-5: ...]  N evals (M spent), S s``, with the out-of-distribution flag when raised."""
    if r["error"]:
        return f"{image}: failed: {r['error']}"
    top = "  ".join(f"{t['class']} {t['p']:.3f}" for t in r["top"])
    spent = f" ({r['evaluations_spent']} spent)" if r["evaluations_spent"] != r["evaluations"] else ""
    tail = f"[top-5: {top}]  {r['evaluations']} evals{spent}, {r['seconds']:.2f} s"
    score = r.get("ood_score")
    if r.get("abstained"):
        return f"{image}: abstained (out of distribution, score {score:.2f})  {tail}"
    flag = f"  OUT OF DISTRIBUTION (score {score:.2f})" if r.get("out_of_distribution") else ""
    return f"{image}: {r['label']}{flag}  {tail}"
