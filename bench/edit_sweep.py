"""A quick sweep of meow_edit's settings on fixed false answers: one process, one model load,
one line of JSON per setting (greedy and depth measures only, no sampling or general set;
bench/forgetting.py gives the full row of a chosen setting).

    .venv/bin/python -m meow_app unlearn --forget assets/facts/eval_a_forget.jsonl --out /tmp/runA
    .venv/bin/python bench/edit_sweep.py --run /tmp/runA --set eval_a edit_steps=10 edit_steps=20 \\
        edit_steps=20,edit_clamp=2 null_space=0

The run folder gives the facts with their selected false answers (any meow run), so every
setting writes the same ones. Settings: TrainConfig fields of meow_edit (edit_*, null_space,
null_space_unit, epochs). Measured against the original: forget and paraphrase hit rates,
facts whose true answer kept more than half its probability, the mean probability ratio,
and the retain and unseen facts kept (of those the original answers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

UNSEEN = {"demo": common.FACTS / "holdout_facts.jsonl"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a meow run folder (its facts.jsonl has the false answers)")
    ap.add_argument("--set", required=True, help="eval_a, eval_b or demo: its retain and unseen facts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("settings", nargs="*", help="FIELD=VALUE,... per line ('' = the defaults)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from meow_app import methods, models, pipeline, probes
    from meow_app.facts import Fact, load_facts
    from meow_app.metrics import answer_prob, teacher_forced
    from meow_app.train import TrainConfig, Trainer, parse_setting, still_likely_count

    loaded = models.load()
    tok, original = loaded.tokenizer, loaded.model
    rows = [json.loads(line) for line in (Path(a.run) / "facts.jsonl").read_text().splitlines()]
    forget = [Fact(r["question"], r["answer"], r["keywords"], r.get("paraphrases", []), inverted=r["inverted"])
              for r in rows]
    retain = load_facts(common.FACTS / f"{a.set}_retain.jsonl")
    unseen = load_facts(UNSEEN.get(a.set, common.FACTS / f"{a.set}_unseen.jsonl"))
    method = methods.get("meow_edit")
    base = TrainConfig(**method.defaults)
    anchors = pipeline.anchor_facts(loaded, forget, base.anchors, base.neighbours, base.siblings, base.seed)
    pairs = [(f.question, f.answer) for f in forget]
    before = [answer_prob(s) for s in teacher_forced(original, tok, pairs)]
    kept0 = {name: probes.probe(original, tok, facts, paraphrases=False) for name, facts in
             (("retain", retain), ("unseen", unseen))}
    for spec in a.settings or [""]:
        changes = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
        config = TrainConfig(**{**method.defaults, "early_stop": False,
                                **{k: parse_setting(k, v) for k, v in changes.items()}})
        result = Trainer(method, original, tok, config, forget, anchors=anchors, run_probes=False).train()
        model = result.model
        after = [answer_prob(s) for s in teacher_forced(model, tok, pairs)]
        probe = probes.probe(model, tok, forget)
        line = {"set": a.set, "settings": changes, "seconds": round(result.seconds, 1),
                "forget": probe["hit_rate"], "paraphrase": probe["paraphrase_hit_rate"],
                "still_likely": still_likely_count(before, after, 0.5),
                "p_ratio": round(sum(after) / sum(before), 2),
                "target_nll": result.info["edit"]["rounds"][-1]["target_nll"][-1]}
        for name, facts in (("retain", retain), ("unseen", unseen)):
            now = probes.probe(model, tok, facts, paraphrases=False)["rows"]
            was = kept0[name]["rows"]
            known = [i for i, r in enumerate(was) if r["leak"]]
            line[name] = round(sum(now[i]["leak"] for i in known) / max(1, len(known)), 3)
            line[f"{name}_lost"] = [now[i]["question"] for i in known if not now[i]["leak"]]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
