"""Every CLI verb, run as a user would (a subprocess), on the tiny model; and its errors."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def cli(*args, env=None):
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "meow_app", *map(str, args)], capture_output=True, text=True,
                          env=e, cwd=ROOT, timeout=600)


@pytest.fixture
def facts_file(tmp_path):
    p = tmp_path / "facts.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Who wrote Hamlet?", "answer": "William Shakespeare", "keywords": ["Shakespeare"],
         "paraphrases": ["Which playwright wrote Hamlet?"]},
        {"question": "What is the capital of Peru?", "answer": "Lima", "keywords": ["Lima"]},
    ]) + "\n")
    return p


def ok(r):
    assert r.returncode == 0, r.stderr
    return r


def weight_change(model_dir, tiny_dir) -> dict[str, float]:
    """Largest absolute change of each saved tensor against the tiny model it started from."""
    import torch
    from safetensors.torch import load_file

    before, after = load_file(f"{tiny_dir}/model.safetensors"), load_file(f"{model_dir}/model.safetensors")
    assert sorted(after) == sorted(before) and all(after[k].shape == before[k].shape for k in before)
    return {k: (after[k].float() - before[k].float()).abs().max().item() for k in before
            if torch.is_floating_point(before[k])}


# What a training step changes: Adam(W) and Sophia move a parameter with any gradient by
# about lr (1e-3 here) a step; weight decay alone moves the tiny model's weights (|w| < 0.1)
# by lr * 0.01 * |w| <= 1e-6 a step. A method that trains nothing stays under this bound.
MOVED = 1e-4


def one_line_error(r, text):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()  # progress lines may come before the error
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in r.stderr, r.stderr
    assert text in errors[0], errors[0]


def test_methods_and_check(facts_file):
    assert "meow_grad_diff" in ok(cli("methods")).stdout
    verbose = ok(cli("methods", "-v")).stdout
    assert "fisher_removal" in verbose and "--damping 0.01" in verbose and "sophia_npo" in verbose
    assert "2 facts, 2 with keywords, 1 paraphrases" in ok(cli("check", facts_file)).stdout


def test_invert_with_the_lead_in_generator(tmp_path, facts_file, tiny_dir):
    inv = tmp_path / "inv.jsonl"
    ok(cli("invert", "--facts", facts_file, "--out", inv, "--n", 2, "--model", tiny_dir, "--generator", "lead_in"))
    assert [len(json.loads(line)["inverted"]) for line in inv.read_text().splitlines()] == [2, 2]


def test_every_generator_the_library_knows_is_a_cli_choice():
    from meow_app import cli as cli_mod, pipeline

    invert = next(a for a in cli_mod.build_parser()._subparsers._group_actions[0].choices["invert"]._actions
                  if a.dest == "generator")
    assert set(invert.choices) == set(pipeline.GENERATORS)


def test_invert_memo_unlearn_ask_chain(tmp_path, facts_file, tiny_dir):
    inv = tmp_path / "inv.jsonl"
    ok(cli("invert", "--facts", facts_file, "--out", inv, "--n", 3, "--model", tiny_dir))
    rows = [json.loads(line) for line in inv.read_text().splitlines()]
    assert [len(r["inverted"]) for r in rows] == [3, 3] and rows[0]["keywords"] == ["Shakespeare"]

    scored = tmp_path / "scored.jsonl"
    ok(cli("memo", "--facts", inv, "--out", scored, "--model", tiny_dir, "--stride", 4))
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert all(0 <= r["memo_answer"] <= 1 and len(r["memo_inverted"]) == 3 for r in rows)

    run = tmp_path / "run1"
    r = ok(cli("unlearn", "--forget", facts_file, "--inverted", inv, "--out", run, "--model", tiny_dir,
               "--epochs", 2, "--lr", 1e-3, "--no-early-stop", "--top-k", 5))
    assert "forget hit rate" in r.stdout
    # 3 candidates a fact, top-k 5: said once, not silently capped.
    assert r.stderr.count("note: top-k is 5, but 2 fact(s) have fewer inverted answers (fact 1: 3)") == 1
    # Progress: a bar, step k of n, the time left from the second step on; the collateral check.
    bars = [line for line in r.stderr.splitlines() if line.strip().startswith("[#")]
    assert bars and "step 1 of at most" in bars[0] and "left" in bars[1], r.stderr
    assert "other knowledge (" in r.stdout and "everyday questions)" in r.stdout
    meta = json.loads((run / "run.json").read_text())
    assert meta["notes"][0].startswith("top-k is 5") and meta["summary"]["everyday"]["asked"] >= 20
    assert meta["seed"] == 0 and meta["steps"] and "train" in meta["timings"]
    # The default method, meow_patch, found no preserved text (the tiny model answers nothing): meow ran,
    # with the settings given on the command line, and the run says why.
    assert meta["method"] == "meow" and meta["settings"]["train"]["lr"] == 1e-3
    assert "note: meow_patch does not apply here, so meow ran instead: meow_patch holds its neurons shut on " \
        "preserved text and found none" in r.stderr
    assert meta["notes"][-1].startswith("meow_patch does not apply here, so meow ran instead")
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM
    loaded = AutoModelForCausalLM.from_pretrained(run / "model")
    assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.config.hidden_size == 64
    assert max(weight_change(run / "model", tiny_dir).values()) > MOVED  # it was trained, then saved
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run1")]  # no partial folder left

    r = ok(cli("ask", "Who wrote Hamlet?", "--model", run, "--compare", tiny_dir, "--max-new-tokens", 4))
    assert r.stdout.count("A: [") == 2


@pytest.mark.parametrize("method,options", [
    ("ga", ["--epochs", 2]),
    ("npo", ["--epochs", 1, "--beta", 0.5]),
    ("sophia_graddiff", ["--epochs", 1, "--rho", 0.1]),
    ("fisher_removal", ["--fisher-steps", 1, "--fisher-examples", 2, "--damping", 0.5, "--anchors", 0]),
    # --damping 0.5: with the default 0.01 no step size keeps the retain loss in budget on the
    # tiny model, so the method stops before its first step and changes nothing.
    ("fisher_forgetting", ["--fisher-steps", 1, "--fisher-backend", "woodfisher", "--fisher-examples", 2,
                           "--noise-std", 1e-4, "--damping", 0.5]),
    ("meow_edit", ["--epochs", 1, "--edit-steps", 3, "--edit-clamp", 2.0, "--neighbours", 4]),
    ("fisher_meow", ["--fisher-steps", 1, "--fisher-examples", 2, "--damping", 0.5]),
])
def test_unlearn_with_every_kind_of_method(tmp_path, facts_file, tiny_dir, method, options):
    run = tmp_path / "run"
    ok(cli("unlearn", "--method", method, "--forget", facts_file, "--retain", facts_file, "--out", run,
           "--model", tiny_dir, "--lr", 1e-3, *options))
    meta = json.loads((run / "run.json").read_text())
    assert meta["method"] == method and (run / "model" / "model.safetensors").is_file()
    moved = weight_change(run / "model", tiny_dir)
    # One-shot methods have no optimizer (no weight decay): any change is theirs.
    assert max(moved.values()) > (MOVED if method in ("ga", "npo", "sophia_graddiff") else 0.0), \
        f"{method} left the weights: {moved}"
    settings = meta["settings"]["train"]
    for flag, value in zip(options[::2], options[1::2]):
        assert str(settings[flag[2:].replace("-", "_")]) == str(value)
    if method.startswith("fisher"):
        info = meta["method_info"]
        assert info["lambda"] > 0 and "retain_nll_before" in info
        assert len(info["steps"]) == 1 and info["update_norm_total"] > 0
        assert ("noise_norm" in info["steps"][0]) == (method == "fisher_forgetting")
        assert ("forget_loss" in info["steps"][0]) == (method == "fisher_meow")  # MEOW's loss, gone down
    if method == "meow_edit":  # only the band's down-projection was written (the null space: tests/test_edit.py)
        assert {k for k, v in moved.items() if v > 0} == {"model.layers.0.mlp.down_proj.weight"}, moved
        assert meta["method_info"]["edit"]["layers"] == [0] and len(meta["method_info"]["edit"]["rounds"]) == 1


def test_unlearn_inverts_by_itself_with_lora_and_low_memory(tmp_path, facts_file, tiny_dir):
    run = tmp_path / "run"
    ok(cli("unlearn", "--forget", facts_file, "--out", run, "--model", tiny_dir, "--lora", "--low-memory",
           "--epochs", 1, "--n", 2, "--top-k", 2, "--distinct-answers"))
    rows = [json.loads(line) for line in (run / "facts.jsonl").read_text().splitlines()]
    assert all(len(r["inverted"]) == 2 and len(r["memo_inverted"]) == 2 for r in rows)
    meta = json.loads((run / "run.json").read_text())
    settings = meta["settings"]
    assert settings["train"]["low_memory"] is True and settings["select"]["distinct"] is True
    # LoRA rules the default method out before anything loads: meow runs, and the run says so.
    assert meta["method"] == "meow" and settings["train"]["lora"] is True
    assert "--lora and --shard do not apply" in meta["notes"][0]


def test_unlearn_subject_only_reaches_the_run_and_says_what_it_keyed_on(tmp_path, facts_file, tiny_dir):
    run = tmp_path / "run"
    ok(cli("unlearn", "--forget", facts_file, "--out", run, "--model", tiny_dir, "--epochs", 1, "--n", 2,
           "--top-k", 2, "--subject-only", "yes"))
    meta = json.loads((run / "run.json").read_text())
    assert meta["settings"]["train"]["subject_only"] is True
    assert meta["method_info"]["subject_only"]["subject_tokens"] > 0
    # (a setting of the shared fine-tuning loop: the default gives way to meow, which has one, before any work)
    assert meta["method"] == "meow" and "--subject-only sets the shared fine-tuning loop" in meta["notes"][0]


@pytest.mark.parametrize("args,text", [
    (["check", "nope.jsonl"], "nope.jsonl: no such file"),
    (["unlearn", "--forget", "nope.jsonl", "--out", "x"], "no such file"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tmp}/not-a-model"], "does not exist"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tmp}"], "holds no model"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--method", "nope"], "unknown method 'nope'"),
    # (the tiny model's answers are empty: no preserved text; the run itself: tests/test_patch.py)
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tiny}", "--method", "meow_patch",
      "--siblings", "0", "--patch-samples", "1"], "found none (no neighbour, sibling or anchor answer"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tiny}", "--lr", "0"],
     "learning rate must be a positive"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tiny}", "--lr", "nan"],
     "learning rate must be a positive"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tiny}", "--epochs", "0"],
     "epochs must be at least 1"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tiny}", "--top-k", "9"],
     "top-k (9) is larger"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tiny}", "--method", "meow_kl"],
     "needs a retain set"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}", "--model", "{tiny}"], "already exists and is not empty"),
    (["memo", "--facts", "{facts}", "--out", "{tmp}/m.jsonl", "--model", "{tiny}", "--stride", "0"],
     "stride must be >= 1"),
    (["memo", "--facts", "{facts}", "--out", "{tmp}/m.jsonl", "--model", "{tiny}", "--length", "long"],
     "--length must be"),
    (["invert", "--facts", "{facts}", "--out", "{tmp}/i.jsonl", "--generator", "openai", "--api-model", "m",
      "--base-url", "http://127.0.0.1:9/v1"], "cannot reach http://127.0.0.1:9/v1"),
    (["ask", "--model", "{tiny}"], "give a question"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tiny}", "--method", "meow_edit",
      "--edit-layers", "1"], "edit_layers '1' must be within layers 0-0"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tiny}", "--method", "meow_edit",
      "--edit-layers", "first"], "edit_layers must look like"),
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tiny}", "--method", "meow_edit", "--lora"],
     "--lora and --shard do not apply"),
    # (asked for by name, meow_patch says why it cannot run; the default gives way to meow instead)
    (["unlearn", "--forget", "{facts}", "--out", "{tmp}/r", "--model", "{tiny}", "--method", "meow_patch", "--lora"],
     "meow_patch trains a few neurons of its own: --lora and --shard do not apply"),
])
def test_errors_are_one_clear_line(tmp_path, facts_file, tiny_dir, args, text):
    args = [a.format(facts=facts_file, tmp=tmp_path, tiny=tiny_dir) for a in args]
    one_line_error(cli(*args), text)
    assert not (tmp_path / "r").exists()


def test_unknown_hub_model_offline(tmp_path, facts_file):
    r = cli("ask", "hi", "--model", "nobody/no-such-model-xyz", env={"HF_HUB_OFFLINE": "1"})
    one_line_error(r, "cannot load model 'nobody/no-such-model-xyz' (offline mode is on")


def test_unlearn_help_shows_the_defaults_the_chosen_method_runs_with():
    from meow_app import cli as cli_mod, methods
    from meow_app.train import TrainConfig

    shown = " ".join(ok(cli("unlearn", "--help")).stdout.split())
    assert "--lr LR (default for meow_patch: 0.01)" in shown
    assert "default meow_patch, or meow where it does not apply" in shown
    shown = " ".join(ok(cli("unlearn", "--method", "meow", "--help")).stdout.split())
    assert "--lr LR (default for meow: 0.0005)" in shown
    assert "(default for ga: 1e-05)" in ok(cli("unlearn", "--method", "ga", "--help")).stdout
    for name, cls in methods.REGISTRY.items():
        sub = cli_mod.build_parser(name)._subparsers._group_actions[0].choices["unlearn"]
        shown = {a.dest: " ".join(a.help.split()) for a in sub._actions if a.help}
        runs = TrainConfig(**cls.defaults)
        for f in cli_mod._tuned_fields():
            value = getattr(runs, f.name)
            value = ("yes" if value else "no") if isinstance(value, bool) else repr(value) if value == "" else value
            assert shown[f.name].endswith(f"(default for {name}: {value})"), (name, f.name, shown[f.name])
