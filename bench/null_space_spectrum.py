"""The default projection's held directions, layer by layer (docs/forgetting.md, twelfth round).

    .venv/bin/python bench/null_space_spectrum.py                      # demo_forget, meow's defaults
    .venv/bin/python bench/null_space_spectrum.py --forget assets/facts/eval_a_forget.jsonl --json out.json

Builds the preserved text a default `meow` run projects against (the original model's
answers to the forget questions' 32 nearest neighbour questions), takes each trained
layer's K^T K as the run does (`null_space.input_covariances`), and prints per layer the
largest eigenvalue's share of the energy and the directions held by `null_space` 0.99 with
and without `--null-space-outliers`. A layer whose energy one direction (a massive
activation) holds is left almost free by the plain share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meow_app import methods, models, pipeline  # noqa: E402
from meow_app.facts import load_facts  # noqa: E402
from meow_app.null_space import eigen_split, input_covariances  # noqa: E402
from meow_app.train import TrainConfig, Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--forget", default="assets/facts/demo_forget.jsonl")
    ap.add_argument("--outliers", type=float, default=0.1, help="the null_space_outliers share compared")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    method = methods.get("meow")
    config = TrainConfig(**method.defaults)
    loaded = models.load()
    forget = load_facts(a.forget)
    anchors = pipeline.anchor_facts(loaded, forget, config.anchors, config.neighbours, config.siblings, config.seed)
    trainer = Trainer(method, loaded.model, loaded.tokenizer, config, forget, anchors=anchors)
    model = trainer._trainable_copy(project=True)  # the run's trained layers, selected as the run selects them
    covs = input_covariances(model, trainer.examples(anchors), loaded.tokenizer.pad_token_id, trainer.device)
    rows, seen = [], set()
    for name, cov in covs.items():
        if id(cov) in seen:  # gate_proj and up_proj share their inputs
            continue
        seen.add(id(cov))
        values = torch.linalg.eigvalsh(cov.double()).flip(0).clamp(min=0)
        rows.append({"layer": name, "inputs": cov.shape[0], "top_share": round(float(values[0] / values.sum()), 4),
                     "held": eigen_split(cov, config.null_space)[0].shape[1],
                     "held_with_outliers": eigen_split(cov, config.null_space, a.outliers)[0].shape[1]})
    print(f"{len(anchors)} preserved answers; null_space {config.null_space}, outliers {a.outliers}")
    print("| layer | inputs | largest direction's share | held | held with outliers |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['inputs']} | {r['top_share']:.2%} | {r['held']} | {r['held_with_outliers']} |")
    if a.json:
        record = {"forget": a.forget, "preserved": len(anchors), "null_space": config.null_space,
                  "outliers": a.outliers, "rows": rows}
        Path(a.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
