"""Bad settings through the CLI: each a one-line error, and nothing half-written (no
RUN_DIR, no hidden partial folder, no output file). The API cases talk to a real HTTP
server on 127.0.0.1 (tests/openai_stub.py) through the real openai client."""

import json
import re

import pytest

from meow_app import cli, models
from meow_app.errors import MeowError
from openai_stub import openai_stub
from apprunner import free_port
from test_bad_input import run_cli
from tiny import tiny_model, tiny_tokenizer


@pytest.fixture
def facts_file(tmp_path):
    p = tmp_path / "facts.jsonl"
    p.write_text(json.dumps({"question": "Who wrote Hamlet?", "answer": "William Shakespeare",
                             "keywords": ["Shakespeare"]}) + "\n")
    return p


def nothing_written(tmp_path, run):
    assert not run.exists(), list(run.iterdir())
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{run.name}")]


def one_line_error(rc, err, text):
    assert rc == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("[", "  "))]  # progress lines
    assert lines == [lines[-1]] and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert text in lines[-1], lines[-1]


@pytest.mark.parametrize("options,message", [
    (["--lr", "0"], "learning rate must be a positive number, got 0.0"),
    (["--lr", "nan"], "learning rate must be a positive number, got nan"),
    (["--epochs", "0"], "epochs must be at least 1, got 0"),
    (["--top-k", "5", "--n", "3"], "top-k (5) is larger than the number of inverted facts per fact (3)"),
    (["--method", "no_such_method"], "no_such_method"),
    # (the Fisher methods and meow_edit project their own steps; meow_patch's loop has no place for it)
    (["--method", "meow_patch", "--null-space", "0.5"], "--null-space sets the shared fine-tuning loop, which "
                                                        "meow_patch does not run"),
    (["--model", "NOT_A_MODEL"], "holds no model"),
    (["--generator", "openai", "--base-url", "UNREACHABLE", "--api-model", "m"], "cannot reach http://127.0.0.1:"),
])
def test_unlearn_bad_settings(options, message, facts_file, tiny_dir, tmp_path, capsys):
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "weights.txt").write_text("no config.json here")
    options = [str(tmp_path / "not_a_model") if o == "NOT_A_MODEL" else
               f"http://127.0.0.1:{free_port()}/v1" if o == "UNREACHABLE" else o for o in options]
    run = tmp_path / "run"
    rc = cli.main(["unlearn", "--forget", str(facts_file), "--out", str(run), "--model", tiny_dir, *options])
    one_line_error(rc, capsys.readouterr().err, message)
    nothing_written(tmp_path, run)


@pytest.mark.parametrize("mode,message", [
    ("401", "the API key was rejected by http://127.0.0.1:"),
    ("500", "returned an error: Error code: 500 - internal error for Bearer ***"),
    ("garbage", "returned an answer in an unexpected format"),
    ("no_choices", "returned an answer in an unexpected format"),
])
def test_api_errors_write_nothing_and_never_show_the_key(mode, message, facts_file, tmp_path, capsys, monkeypatch):
    key = "sk-test-SECRET-4f1c9e0b7a"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    out = tmp_path / "inv.jsonl"
    with openai_stub(mode) as server:
        rc = cli.main(["invert", "--facts", str(facts_file), "--out", str(out), "--generator", "openai",
                       "--base-url", server.url, "--api-model", "stub"])
    err = capsys.readouterr().err
    one_line_error(rc, err, message)
    assert server.seen_keys and server.seen_keys[0] == f"Bearer {key}"  # the key did reach the server...
    assert key not in err  # ...and its echo never reached the user
    assert not out.exists() and not list(tmp_path.glob(".inv.jsonl*"))


def test_unknown_model_id_offline(facts_file, tmp_path):
    run = tmp_path / "run"
    r = run_cli("unlearn", "--forget", facts_file, "--out", run, "--model", "no-such-org/no-such-model",
                env={"HF_HUB_OFFLINE": "1"})
    assert (r.returncode == 2
            and r.stderr.strip().splitlines()[-1].startswith("error: cannot load model "
                                                             "'no-such-org/no-such-model' (offline mode"))
    nothing_written(tmp_path, run)


def test_model_without_chat_template_falls_back_to_plain_prompts(facts_file, tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = None
    folder = tmp_path / "base_model"
    tiny_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    run = tmp_path / "run"
    r = run_cli("unlearn", "--forget", facts_file, "--out", run, "--model", folder, "--n", 2, "--top-k", 1,
                "--epochs", 1, "--num-batch", 1, "--no-early-stop")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "no chat template" in warnings[0] and "Question: ... Answer:" in warnings[0]
    lm = models.load(str(run), "cpu")  # the run keeps the format it was trained in
    assert models.plain_prompts(lm.tokenizer) and "plain Question/Answer prompts" in lm.describe()
    from meow_app.generation import chat_prompt

    assert chat_prompt(lm.tokenizer, "Who wrote Hamlet?") == "Question: Who wrote Hamlet?\nAnswer:"


@pytest.mark.parametrize("where,message", [
    ("hub", "no such model on the Hugging Face Hub"),          # a typo, with the Hub reachable
    ("closed", "the Hugging Face Hub cannot be reached"),        # no network (nothing listens there)
    ("bad id", "not a local folder, and not a Hugging Face id"),
])
def test_a_mistyped_hub_id_fails_at_once_without_retries(monkeypatch, where, message):
    from hub_server import HubServer

    from meow_app import models

    def no_waiting(seconds):  # download retries wait between tries: none may happen
        raise AssertionError(f"waited {seconds} s before failing")

    monkeypatch.setattr("time.sleep", no_waiting)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_x")  # the local Hub answers only with its token
    spec = "no such/model!" if where == "bad id" else "nobody/smollm2-135m-instruc"
    with HubServer("hf_x") as hub:
        endpoint = hub.url if where == "hub" else "http://127.0.0.1:9"
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
        with pytest.raises(MeowError, match=rf"^cannot load model '{re.escape(spec)}': {message}"):
            models.load(spec)
        if where == "hub":
            asked = [r["path"] for r in hub.requests if "smollm2" in r["path"]]
            assert asked == ["/api/models/nobody/smollm2-135m-instruc"], hub.requests  # once, no retry


def test_unlearn_bad_yes_no_setting_names_it(facts_file, tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    try:
        rc = cli.main(["unlearn", "--forget", str(facts_file), "--out", str(run), "--model", tiny_dir,
                       "--own-answers", "maybe"])
    except SystemExit as e:  # argparse's own exit for a bad option value
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "setting 'own_answers' must be a bool (yes or no), got 'maybe'" in err, err
    nothing_written(tmp_path, run)
