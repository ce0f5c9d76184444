"""The verification report as one self-contained HTML page (the app shows the same parts).

    html(report_dict) -> str

Plots are matplotlib (Agg, no display needed) PNGs embedded as base64, so the file can be
mailed or archived alone. Every piece of text from facts or model answers goes through
html.escape: facts may contain markup or script, and must show as text.
"""

from __future__ import annotations

import base64
import html as _html
import io

from . import evaluate

# The numbers a reader sees, in plain words; (key, label, what a good forget looks like).
METRICS = [
    ("hit_rate", "gives the true answer", "lower is better on forget"),
    ("paraphrase_hit_rate", "gives it when asked differently", "lower is better on forget"),
    ("rougeL_recall", "overlap with the true answer (ROUGE-L recall)", "lower is better on forget"),
    ("answer_prob", "probability of the true answer", "lower is better on forget"),
    ("truth_ratio", "truth ratio (wrong vs true answers)", "higher = truth no longer preferred"),
    ("extraction_strength", "extraction strength", "lower is better on forget"),
    ("exact_memorization", "exact memorization", "lower is better on forget"),
    ("memo", "MEMO (verbatim recall from cuts)", "lower is better on forget"),
]
VERDICT_COLOURS = {evaluate.FORGOTTEN: "#1b7f3b", evaluate.KEPT: "#1b7f3b", evaluate.NOT_KNOWN: "#666",
                   evaluate.KNOWN: "#000", evaluate.KNOWN_REWORDED: "#000", evaluate.UNKNOWN: "#666",
                   evaluate.STILL_LIKELY: "#b36b00", evaluate.PARAPHRASE: "#b36b00",
                   evaluate.RELEARNED: "#b36b00", evaluate.STILL_KNOWN: "#b00020", evaluate.LOST: "#b00020"}

e = _html.escape


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 0.001 and x != 0 else f"{x:.3f}"
    return e(str(x))


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


# Measures that are not fractions of 1: each gets its own axis (a truth ratio of 7,578
# beside rates of 0.3 would flatten every other bar), on a log scale.
OWN_AXIS = {"truth_ratio"}
# On the forget set lower is better for every measure but the truth ratio; on the
# other sets (what should be kept) the other way round.
HIGHER_BETTER_ON_FORGET = {"truth_ratio"}


def better(key: str, set_name: str) -> str:
    """Which direction is better for a measure on a set, as the plot labels it."""
    higher = (key in HIGHER_BETTER_ON_FORGET) == (set_name == "forget")
    return "↑ better" if higher else "↓ better"


def metric_bars(report: dict, set_name: str = "forget") -> str | None:
    fig = metric_figure(report, set_name)
    return None if fig is None else _png(fig)


def metric_figure(report: dict, set_name: str = "forget"):
    """Grouped bars, one bar per model (before / after): the measures between 0 and 1 on one
    axis, each other measure on its own log axis; every label says which way is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = report["sets"].get(set_name)
    if not sets:
        return None
    keys = [(k, label) for k, label, _ in METRICS
            if any(sets[s]["aggregate"].get(k) is not None for s in report["sides"])]
    groups = [[kl for kl in keys if kl[0] not in OWN_AXIS]] + [[kl] for kl in keys if kl[0] in OWN_AXIS]
    groups = [g for g in groups if g]
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(8 + 1.6 * (len(groups) - 1), 3.4), squeeze=False,
                             gridspec_kw={"width_ratios": [len(g) for g in groups]})
    width = 0.8 / len(report["sides"])
    for ax, group in zip(axes[0], groups):
        own = group[0][0] in OWN_AXIS
        for j, side in enumerate(report["sides"]):
            vals = [sets[side]["aggregate"].get(k) for k, _ in group]
            vals = [v if v is not None and (v > 0 or not own) else float("nan") for v in vals]
            ax.bar([i + j * width for i in range(len(group))], vals, width, label=side)
        ax.set_xticks([i + width * (len(report["sides"]) - 1) / 2 for i in range(len(group))])
        ax.set_xticklabels([f"{label}\n({better(k, set_name)})" for k, label in group], rotation=25, ha="right",
                           fontsize=8)
        if own:
            ax.set_yscale("log")
            ax.set_title("log scale", fontsize=8)
        else:
            ax.set_ylim(0, 1.05)
            ax.set_title("from 0 to 1", fontsize=8)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{set_name} set: before and after")
    return fig


def per_fact_bars(report: dict, key: str = "memo", set_name: str = "forget") -> str | None:
    """One bar pair per fact (e.g. MEMO per fact), before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = report["sets"].get(set_name)
    if not sets or all(r.get(key) is None for s in report["sides"] for r in sets[s]["rows"]):
        return None
    n = len(sets[report["sides"][0]]["rows"])
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * n), 3))
    width = 0.8 / len(report["sides"])
    for j, side in enumerate(report["sides"]):
        ax.bar([i + j * width for i in range(n)], [r.get(key) or 0.0 for r in sets[side]["rows"]], width, label=side)
    ax.set_xticks(range(n))
    ax.set_xticklabels([str(i + 1) for i in range(n)], fontsize=7)
    ax.set_xlabel("fact number (as in the table)")
    ax.set_title(f"{key} per fact ({set_name})")
    ax.legend()
    return _png(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(v: str) -> str:
    return f'<b style="color:{VERDICT_COLOURS.get(v, "#000")}">{e(v)}</b>'


def summary_table(report: dict) -> str:
    """Every aggregate of every set, one column per model."""
    rows = []
    for set_name, sides in report["sets"].items():
        for key, label, good in METRICS:
            vals = [sides[s]["aggregate"].get(key) for s in report["sides"]]
            if any(v is not None for v in vals):
                rows.append([e(set_name), e(label)] + [_fmt(v) for v in vals]
                            + [e(good if set_name == "forget" else "")])
    return _table(["set", "measure"] + [e(s) for s in report["sides"]] + ["reading"], rows)


def html(report: dict) -> str:
    """The whole report page."""
    sides = report["sides"]
    parts = ["<h1>Verification report</h1><p>Models: "
             + ", ".join(f"<b>{e(s)}</b> = {e(str(report['models'][s]))}" for s in sides) + "</p>"]
    notes = report.get("notes") or []
    if notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    verdicts = report.get("verdicts", {})
    if verdicts.get("forget"):
        counts = {}
        for v in verdicts["forget"]:
            counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
        title = "Was each fact forgotten?" if len(sides) > 1 else "Does the model know each fact?"
        parts.append(f"<h2>{title}</h2><p>"
                     + "; ".join(f"{_verdict(k)}: {n}" for k, n in counts.items()) + "</p>")
        answers = ["answer before", "answer after"] if len(sides) > 1 else ["answer"]
        parts.append(_table(["#", "question", "true answer", "verdict", "why"] + answers,
                            [[str(i + 1), e(v["question"]), e(v["answer"]), _verdict(v["verdict"]),
                              e(v.get("detail", ""))]
                             + ([e(v["before"] or "")] if len(sides) > 1 else []) + [e(v["after"] or "")]
                             for i, v in enumerate(verdicts["forget"])]))
    if verdicts.get("retain"):
        lost = [v for v in verdicts["retain"] if v["verdict"] == evaluate.LOST]
        kept = sum(v["verdict"] == evaluate.KEPT for v in verdicts["retain"])
        parts.append(f"<h2>Facts that should be kept</h2><p>{kept} kept, {len(lost)} lost.</p>")
        if lost:
            parts.append(_table(["question", "true answer", "answer before", "answer after"],
                                [[e(v["question"]), e(v["answer"]), e(v["before"] or ""), e(v["after"] or "")]
                                 for v in lost]))
    parts.append("<h2>All numbers</h2>" + summary_table(report))
    if report.get("mia"):
        parts.append("<h2>Membership inference (forget vs holdout)</h2><p>AUC 0.5 means an attacker cannot tell the "
                     "forgotten facts from facts the model never trained on.</p>"
                     + _table(["attack"] + [e(s) for s in sides],
                              [[e(a)] + [_fmt(report["mia"][s][a]) for s in sides] for a in ("loss", "zlib", "min_k")]))
    if report.get("general"):
        g = report["general"]
        parts.append("<h2>General ability (shipped everyday questions)</h2>"
                     + _table(["measure"] + [e(s) for s in sides],
                              [["questions answered correctly"] + [_fmt(g[s]["questions_accuracy"]) for s in sides],
                               ["multiple choice correct"] + [_fmt(g[s]["multiple_choice_accuracy"]) for s in sides]]))
    if report.get("relearn"):
        r = report["relearn"]
        parts.append(f"<h2>Relearning attack</h2><p>The unlearned model was fine-tuned on "
                     f"{len(r['trained_on'])} of the forgotten facts; the others were asked again. "
                     "Facts that come back were hidden, not removed.</p>"
                     + _table(["measure", "before relearning", "after relearning"],
                              [[e(label)] + [_fmt(r[w].get(k)) for w in ("before", "after")]
                               for k, label, _ in METRICS[:4]]))
    if report.get("tofu"):
        t = report["tofu"]
        parts.append("<h2>TOFU</h2>" + _table(["measure", "value"], [[e(k), _fmt(v)] for k, v in t.items()
                                                                    if not isinstance(v, (dict, list))]))
    for plot in (metric_bars(report, "forget"), metric_bars(report, "retain"), per_fact_bars(report, "memo"),
                 per_fact_bars(report, "answer_prob")):
        if plot:
            parts.append(plot)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>MEOW verification report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
