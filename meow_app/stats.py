"""Set-level statistics: means that skip missing values, harmonic mean, AUC, KS test."""

from __future__ import annotations


def mean(values) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def percent(x, missing: str = "n/a") -> str:
    """A share (0.37) as a whole percentage ("37%"); `missing` when it is None. The one
    formatter of the CLI, the app, the model card and bench/."""
    return missing if x is None else f"{x:.0%}"


def harmonic_mean(values) -> float:
    """n / sum(1/x): dominated by the weakest number, which is why TOFU's utility uses it.
    Any zero makes it zero."""
    vals = [float(v) for v in values]
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def auc(positives, negatives) -> float | None:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties count
    half. 0.5: the scores cannot tell the two sets apart."""
    pos, neg = list(positives), list(negatives)
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def ks_pvalue(a, b) -> float | None:
    """Two-sample Kolmogorov-Smirnov p-value (TOFU's forget quality): high = same distribution."""
    from scipy.stats import ks_2samp

    a, b = [float(x) for x in a], [float(x) for x in b]
    if not a or not b:
        return None
    return float(ks_2samp(a, b).pvalue)
