"""Where a `meow_patch` run's sampled leaks come from, read in its checkpoint.

    .venv/bin/python bench/leak_gates.py RUN_DIR --facts assets/facts/eval_g_forget.jsonl
    .venv/bin/python bench/leak_gates.py RUN_DIR --facts ... --truth-neurons 5,10,20 --retain R.jsonl --unseen U.jsonl

For each forget fact, `--samples` answers sampled at T=1 from the unlearned model (the
evaluation's own sampling check, `extraction.sampling`, with its seed). For each one that
states the truth, at the token where the truth begins: the largest gate pre-activation
(g . x) of the fact's patch neurons, that neuron's up (u . x), the largest activation
act(g . x) * (u . x), and the truth token's probability under the unlearned
model, under it with the fact's neurons switched off (their down columns zeroed) and under
the original. The same reading first on each fact's own question answered as the original
answers it (rows "own": a context the neurons were trained in). A leak through a shut gate
(g . x < 0) would need gates that open more widely; one through an open gate whose neurons
barely move the truth's probability needs a value that acts there.

`--truth-neurons D,...` (docs/forgetting.md, nineteenth round): a test of one answer to the
second case, not a method. Each fact gets one more neuron in a free slot of the patched layer:
its gate and up vectors are the fact's first trained gate (so act(g . x) * (g . x) is large
where that gate opens and near zero where it is shut), its down vector minus the direction
that raises the truth's first tokens' logits most directly (their unembedding rows times the
final norm's weight, averaged), scaled so that the truth's log-probability along the fact's
question and paraphrases answered with the truth falls by D nats (a linear estimate from its fall
at scale 1). For each D: the sampled
leaks again and the greedy answers of the retain and unseen sets (how many still say their
fact). Nothing is saved.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (the repository root on sys.path)
from meow_app import extraction, generation, models, patch, probes  # noqa: E402
from meow_app.facts import load_facts  # noqa: E402


def token_at(tokenizer, ids: list[int], char: int) -> int:
    """The index in `ids` of the token whose text holds character `char` of their decoded text."""
    for k in range(len(ids)):
        if len(tokenizer.decode(ids[:k + 1], skip_special_tokens=True)) > char:
            return k
    return len(ids) - 1


@torch.no_grad()
def read(model, ids: list[int], layer: int, slots: list[int]):
    """(the slots' gate and up pre-activations at every position, each None for no slots (the
    original, which may not have them: patch_widen adds them); the log-probabilities of every next token)."""
    got = {"g": None, "u": None}
    mlp = model.model.layers[layer].mlp
    handles = [mlp.gate_proj.register_forward_hook(lambda m, i, o: got.__setitem__("g", o[0][:, slots])),
               mlp.up_proj.register_forward_hook(lambda m, i, o: got.__setitem__("u", o[0][:, slots]))] \
        if slots else []
    try:
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float()
    finally:
        for handle in handles:
            handle.remove()
    return got["g"], got["u"], logits.log_softmax(-1)


@torch.no_grad()
def truth_row(original, unlearned, tokenizer, fact, i: int, text: str, layer: int, own: list[int]) -> dict:
    """`text` as the answer to fact i's question, read at the token where its truth begins: the
    fact's neurons' largest gate pre-activation (g . x), their up (u . x) and activation
    (act(g . x) * (u . x)) there, and p(truth) with the neurons, without them and in the original."""
    at = probes.first_mention(text, fact)
    prompt = generation.encode(tokenizer, generation.chat_prompt(tokenizer, fact.question))
    said = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = prompt + said
    k = len(prompt) + token_at(tokenizer, said, at)  # the truth's first token
    gates, ups, logp = read(unlearned, ids, layer, own)
    _, _, logp_original = read(original, ids, layer, [])
    mlp = unlearned.model.layers[layer].mlp
    down = mlp.down_proj.weight
    saved = down[:, own].clone()
    down[:, own] = 0
    try:
        _, _, logp_off = read(unlearned, ids, layer, own)
    finally:
        down[:, own] = saved
    g, u = gates[k - 1].float(), ups[k - 1].float()
    return {"fact": i, "text": text, "token": tokenizer.decode([ids[k]]),
            "gate": round(float(g.max()), 2), "up": round(float(u[g.argmax()]), 2),
            "activation": round(float((mlp.act_fn(g) * u).max()), 2),
            "p": round(float(logp[k - 1, ids[k]].exp()), 4),
            "p_neurons_off": round(float(logp_off[k - 1, ids[k]].exp()), 4),
            "p_original": round(float(logp_original[k - 1, ids[k]].exp()), 4)}


def own_slots(slots: list[int], facts, i: int) -> list[int]:
    per = len(slots) // len(facts)
    return [slots[j] for j in range(i * per, (i + 1) * per)]


@torch.no_grad()
def leak_rows(original, unlearned, tokenizer, facts, layer: int, slots: list[int], n: int) -> list[dict]:
    """Each answer of the evaluation's sampling check (extraction.sampling: n a fact, T=1, seed 0)
    that states the truth, read at the token where the truth begins."""
    rows = []
    for r in extraction.sampling(unlearned, tokenizer, facts, samples=n)["rows"]:
        i, f, text = r["fact"], facts[r["fact"]], r["answer"]
        if r["leak"] and probes.first_mention(text, f) >= 0:
            rows.append(truth_row(original, unlearned, tokenizer, f, i, text, layer, own_slots(slots, facts, i)))
    return rows


@torch.no_grad()
def own_rows(original, unlearned, tokenizer, facts, layer: int, slots: list[int]) -> list[dict]:
    """The same reading on each fact's own question answered as the original answers it (greedy):
    a context the neurons were trained in, to set the leaks' readings against."""
    answers = generation.answer(original, tokenizer, [f.question for f in facts])
    return [truth_row(original, unlearned, tokenizer, f, i, a, layer, own_slots(slots, facts, i))
            for i, (f, a) in enumerate(zip(facts, answers)) if probes.first_mention(a, f) >= 0]


def first_truth_ids(tokenizer, fact) -> list[int]:
    """The first token of each spelling of the fact's keywords (patch.first_token_ids)."""
    return patch.first_token_ids(tokenizer, fact.keywords or [fact.answer])


class TruthNeurons:
    """--truth-neurons: one fixed neuron a fact in a free slot (see the module's docstring)."""

    def __init__(self, model, tokenizer, facts, layer: int, slots: list[int], added: bool = False):
        self.model, self.tokenizer, self.facts = model, tokenizer, facts
        self.mlp = model.model.layers[layer].mlp
        self.gates = [self.mlp.gate_proj.weight[own_slots(slots, facts, i)[0]].detach().clone()
                      for i in range(len(facts))]
        if added:  # (a run that added its neurons: these are added too, and the drop 0 row removes nothing)
            self.slots = patch.widen(model, model.model.layers, len(facts))
        else:  # (the smallest down columns; their removal alone: the drop 0 row)
            free = [j for j in self.mlp.down_proj.weight.norm(dim=0).argsort().tolist() if j not in slots]
            self.slots = free[:len(facts)]
        self.directions = [patch.logit_direction(model, first_truth_ids(tokenizer, f)) for f in facts]
        self.set([0.0] * len(facts))
        base = [self.truth_logp(f) for f in facts]
        self.set([1.0] * len(facts))
        self.slope = [b - self.truth_logp(f) for b, f in zip(base, facts)]  # nats a unit of scale

    @torch.no_grad()
    def set(self, scales: list[float]) -> None:
        for j, g, v, s in zip(self.slots, self.gates, self.directions, scales):
            self.mlp.gate_proj.weight[j] = g
            self.mlp.up_proj.weight[j] = g
            self.mlp.down_proj.weight[:, j] = -s * v

    def drop(self, nats: float) -> None:
        if nats and min(self.slope) <= 1e-3:
            raise SystemExit(f"a truth neuron does not lower its truth at scale 1 (falls: {self.slope}): "
                             "no scale to set")
        self.set([nats / s if nats else 0.0 for s in self.slope])

    @torch.no_grad()
    def truth_logp(self, fact) -> float:
        """The truth's first tokens' log-probability, mean over the answer positions of the fact's
        question and paraphrases answered with its reference answer."""
        truth = torch.tensor(first_truth_ids(self.tokenizer, fact), dtype=torch.long, device=self.model.device)
        total, count = 0.0, 0
        for q in [fact.question, *fact.paraphrases]:
            prompt = generation.encode(self.tokenizer, generation.chat_prompt(self.tokenizer, q))
            ids = prompt + self.tokenizer(fact.answer, add_special_tokens=False)["input_ids"]
            logits = self.model(input_ids=torch.tensor([ids], device=self.model.device)).logits[0].float()
            logp = logits.log_softmax(-1)[len(prompt) - 1:-1]
            total += float(torch.logsumexp(logp[:, truth], -1).sum())
            count += logp.shape[0]
        return total / count


def sampled_leaks(model, tokenizer, facts, n: int) -> list[int]:
    """Per fact, how many of the evaluation's n samples (extraction.sampling) state the truth."""
    rows = extraction.sampling(model, tokenizer, facts, samples=n)["rows"]
    return [sum(r["leak"] for r in rows if r["fact"] == i) for i in range(len(facts))]


def still_said(model, tokenizer, facts) -> int:
    """How many of the facts the greedy answer to their question still states."""
    return sum(r["leak"] for r in probes.probe(model, tokenizer, facts, paraphrases=False)["rows"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--facts", required=True, help="the run's forget set (JSONL), in the run's order")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--truth-neurons", default="", help="comma-separated drops in nats (see above)")
    ap.add_argument("--retain", default=None)
    ap.add_argument("--unseen", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    run = json.loads((Path(args.run_dir) / "run.json").read_text())
    info = run["method_info"]["patch"]
    facts = load_facts(args.facts)
    if run["n_forget"] != len(facts) or len(info["slots"]) % len(facts):
        raise SystemExit(f"{args.facts} has {len(facts)} facts, the run {run['n_forget']} and "
                         f"{len(info['slots'])} neurons: give the run's own forget set, in its order")
    # (the model the run started from: run.json names the embedded one by its display name)
    original = models.load(None if run["model"] == models.EMBEDDED_NAME else run["model"])
    unlearned = models.load(str(Path(args.run_dir) / "model"))
    tok = unlearned.tokenizer
    own = own_rows(original.model, unlearned.model, tok, facts, info["layer"], info["slots"])
    rows = leak_rows(original.model, unlearned.model, tok, facts, info["layer"], info["slots"], args.samples)
    for kind, found in (("own", own), ("leak", rows)):
        for r in found:
            print(f"{kind:4} [{r['fact']}] gate {r['gate']:+.2f} up {r['up']:+.2f} activation {r['activation']:+.1f}  "
                  f"p(truth) {r['p']:.3f}, neurons off {r['p_neurons_off']:.3f}, original {r['p_original']:.3f}  "
                  f"{r['token']!r} :: {r['text'][:100]!r}")
    opened = sum(r["gate"] > 0 for r in rows)
    print(f"{len(rows)} of {args.samples * len(facts)} samples state the truth; a fact's gate open at {opened} of them")
    out = {"run_dir": args.run_dir, "facts": args.facts, "samples": args.samples, "layer": info["layer"],
           "own": own, "leaks": rows, "truth_neurons": []}
    if args.truth_neurons:
        sets = {name: load_facts(p) for name, p in (("retain", args.retain), ("unseen", args.unseen)) if p}
        neurons = TruthNeurons(unlearned.model, tok, facts, info["layer"], info["slots"], info.get("added", False))
        for nats in [0.0] + [float(x) for x in args.truth_neurons.split(",")]:
            neurons.drop(nats)
            leaks = sampled_leaks(unlearned.model, tok, facts, args.samples)
            said = {name: still_said(unlearned.model, tok, fs) for name, fs in sets.items()}
            row = {"drop_nats": nats, "leaks_per_fact": leaks, "facts_leaking": sum(x > 0 for x in leaks),
                   **{f"{name}_said": k for name, k in said.items()},
                   **{f"{name}_n": len(s) for name, s in sets.items()}}
            out["truth_neurons"].append(row)
            print(row, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
