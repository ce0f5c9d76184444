"""Where meow_patch's gates open: on the text they were held shut on, and on the facts kept.

    .venv/bin/python bench/gate_firing.py --set eval_e
    .venv/bin/python bench/gate_firing.py --set eval_e --options patch_weight=100,truth_span=true

One `unlearn` run (meow_patch, its defaults and the --options changes) on the set's forget file.
Its patched model is the original plus a few gated neurons (methods/meow_patch.py), so an
answer can change only where a gate opens: a neuron adds down * act(g . x) * (up . x), and the
hinge holds g . x below -patch_margin on every token of preserved text. Printed, as the largest
g . x over a row's answer positions (and which neuron):

- the preserved rows (neighbour, sibling and anchor questions with the original's answers),
  as trained, the most open first: how many stayed below -margin, how many opened past 0;
- the set's forget, retain and unseen questions with the original model's greedy answers:
  where the retain facts' gates open as wide as the forgotten facts', a neighbour's answer
  is moved as theirs are (docs/forgetting.md, twenty-sixth round).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import forgetting  # noqa: E402
from meow_app import generation, models, patch, pipeline  # noqa: E402
from meow_app.facts import load_facts  # noqa: E402
from meow_app.methods import meow_patch  # noqa: E402


def opening(gate: torch.Tensor, x: torch.Tensor, start: int) -> tuple[float, int]:
    """The largest g . x over positions start.. of one row (x: its MLP inputs) and its neuron."""
    g = (x[max(start - 1, 0):] @ gate.T).max(0).values
    return float(g.max()), int(g.argmax())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default="eval_e", help="held-out set under assets/facts (eval_a ... eval_g)")
    ap.add_argument("--options", default="", help="meow_patch settings (TrainConfig fields), FIELD=VALUE,...")
    ap.add_argument("--rows", type=int, default=15, help="preserved rows to print, the most open first")
    args = ap.parse_args()
    overrides = forgetting.parse_variant(f"run:meow_patch:{args.options}")["overrides"]
    seen = {}
    plain_inputs_at, plain_write = patch.inputs_at, patch.Patch.write

    def recorded(model, mlp, examples, pad_id, device):  # patch.mlp_inputs, each row kept apart
        seen["examples"], seen["inputs"] = examples, plain_inputs_at(model, [mlp], examples, pad_id, device)[0]
        return torch.cat(seen["inputs"])

    def write(gates):  # the gates as trained, before they go into the model's weights
        seen["gate"] = gates.gate.detach().clone()
        plain_write(gates)

    patch.mlp_inputs, patch.Patch.write = recorded, write
    facts = {kind: load_facts(common.FACTS / f"{args.set}_{kind}.jsonl") for kind in ("forget", "retain", "unseen")}
    with tempfile.TemporaryDirectory() as out:
        run = pipeline.unlearn(facts["forget"], Path(out) / "run", method="meow_patch", overrides=overrides)
        unlearned = models.load(str(Path(out) / "run" / "model"))
    info = run["method_info"]["patch"]
    margin = overrides.get("patch_margin", meow_patch.MeowPatch.defaults["patch_margin"])
    gate, tok = seen["gate"], unlearned.tokenizer
    rows = sorted(((*opening(gate, x, 0), tok.decode(e.ids)) for e, x in zip(seen["examples"], seen["inputs"])),
                  key=lambda r: -r[0])
    print(f"{args.set}, options {overrides or 'none'}: layer {info['layer']}, {len(info['slots'])} neurons, "
          f"margin {margin}")
    print(f"preserved rows: {len(rows)}; largest g.x below -margin in {sum(r[0] < -margin for r in rows)}, "
          f"above 0 in {sum(r[0] > 0 for r in rows)}")
    for top, neuron, text in rows[:args.rows]:
        print(f"  {top:6.2f}  n{neuron:<2d} {' | '.join(text.split('<|im_start|>')[-2:])[-150:]!r}")
    original = models.load_shared()  # (the one unlearn read and left as it was: it trains a copy)
    got = {}
    mlp = unlearned.model.model.layers[info["layer"]].mlp
    hook = mlp.register_forward_pre_hook(lambda module, a: got.__setitem__("x", a[0][0].detach()))
    try:
        for kind, fs in facts.items():
            said = generation.answer(original.model, tok, [f.question for f in fs])
            for f, answer in zip(fs, said):
                prompt = generation.chat_prompt(tok, f.question)
                with torch.no_grad():
                    unlearned.model(torch.tensor([generation.encode(tok, prompt + answer)]))
                top, neuron = opening(gate, got["x"], len(generation.encode(tok, prompt)))
                print(f"{kind:7s} {top:6.2f}  n{neuron:<2d} {f.question}")
    finally:
        hook.remove()


if __name__ == "__main__":
    main()
