"""A fake API key and Hub token in the environment of real CLI runs that use an
OpenAI-compatible API (a real local HTTP server, the real openai client): neither may
appear in anything the runs produce, nor in an error a server echoes the key into."""

import json

from openai_stub import WRONG, openai_stub
from test_bad_input import run_cli

KEY = "sk-test-SECRET-7c3a90e1f5d2"
HF_TOKEN = "hf_testSECRET4e8b2d6a1c"
ENV = {"OPENAI_API_KEY": KEY, "HF_TOKEN": HF_TOKEN}


def produced(folder):
    return [f for f in folder.rglob("*") if f.is_file()]


def test_runs_with_a_key_leave_it_nowhere(tmp_path, tiny_dir):
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"question": "Who wrote Hamlet?", "answer": "William Shakespeare",
                                 "keywords": ["Shakespeare"]}) + "\n")
    home, run, inv = tmp_path / "home", tmp_path / "run", tmp_path / "inv.jsonl"
    env = {**ENV, "MEOW_HOME": str(home), "MEOW_DEBUG": ""}
    with openai_stub("ok") as api:
        api_args = ["--generator", "openai", "--base-url", api.url, "--api-model", "stub", "--n", 2]
        r1 = run_cli("invert", "--facts", facts, "--out", inv, *api_args, env=env)
        r2 = run_cli("unlearn", "--forget", facts, "--out", run, "--model", tiny_dir, *api_args, "--top-k", 1,
                     "--epochs", 1, "--num-batch", 1, "--no-early-stop", env=env)
        api.mode = "401"
        r3 = run_cli("invert", "--facts", facts, "--out", tmp_path / "inv2.jsonl", *api_args, env=env)
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr, r2.stderr)
    assert r3.returncode == 2 and "the API key was rejected" in r3.stderr
    assert len(api.seen_keys) == 3 and set(api.seen_keys) == {f"Bearer {KEY}"}  # the key was used
    assert json.loads(inv.read_text())["inverted"] == WRONG[:2]
    settings = json.loads((run / "run.json").read_text())["settings"]["invert"]
    assert settings["generator"] == "openai" and "api_key" not in settings
    files = produced(run) + produced(home) + [inv]
    assert (run / "model" / "model.safetensors") in files
    for secret in (KEY, HF_TOKEN):
        for r in (r1, r2, r3):
            assert secret not in r.stdout and secret not in r.stderr
        for f in files:
            assert secret.encode() not in f.read_bytes(), f
