"""The evaluate verb end to end on the real embedded model, numbers checked by hand."""

import json
import math

import pytest
import torch

from conftest import ROOT
from meow_app.facts import load_facts
from test_cli import cli, ok

pytestmark = pytest.mark.embedded


@torch.no_grad()
def test_evaluate_cli_on_the_embedded_model(tmp_path):
    facts = ROOT / "assets/facts"
    forget, retain, holdout = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl", tmp_path / "holdout.jsonl"
    for src, dst, n in (("demo_forget", forget, 3), ("demo_retain", retain, 3), ("holdout_facts", holdout, 3)):
        dst.write_text("".join((facts / f"{src}.jsonl").read_text().splitlines(True)[:n]))
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    r = ok(cli("evaluate", "--forget", forget, "--retain", retain, "--holdout", holdout, "--out", out, "--html", page,
               "--no-general"))
    assert "verdicts: 3 known" in r.stdout  # one model alone: the original, which knows all three
    data = json.loads(out.read_text())
    rows = data["sets"]["forget"]["model"]["rows"]
    assert "Paris" in rows[0]["generated"] and rows[0]["keyword_hit"] and rows[0]["rougeL_recall"] == 1.0
    # Hand check of one number: p("Paris" | question) by a direct, unbatched forward pass.
    from meow_app import models
    from meow_app.generation import chat_prompt, encode

    lm = models.load_shared()
    tok = lm.tokenizer
    p, a = encode(tok, chat_prompt(tok, rows[0]["question"])), encode(tok, rows[0]["answer"])
    logp = lm.model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1:-1].float().log_softmax(-1)
    nll = -sum(logp[j, t].item() for j, t in enumerate(a)) / len(a)
    assert rows[0]["answer_prob"] == pytest.approx(math.exp(-nll), rel=1e-3)
    assert data["mia"]["model"]["loss"] is not None and data["sets"]["forget"]["model"]["aggregate"]["memo"] > 0
    assert "Verification report" in page.read_text()
    assert len(load_facts(retain)) == len(data["sets"]["retain"]["model"]["rows"])
