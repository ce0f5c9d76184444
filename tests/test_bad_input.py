"""Every file of the bad-input corpus (tests/data/make_bad.py) through the CLI and the web
app's upload: a one-line message naming file, line and problem, or a sensible acceptance;
never a traceback, never a hang."""

import os
import subprocess
import sys

import gradio as gr
import pytest

import app
from conftest import ROOT
from meow_app import cli, evaluate, report
from meow_app.facts import load_facts
from studio import facts_tab, session

sys.path.insert(0, str(ROOT / "tests" / "data"))
import make_bad  # noqa: E402

SMALL, BIG = make_bad.small_cases(), make_bad.big_cases()
CASES = {**SMALL, **BIG}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The committed small files (checked against the script) and the big ones, made now."""
    for name, (data, _) in SMALL.items():
        assert (make_bad.BAD / name).read_bytes() == data, f"tests/data/bad/{name} is stale: rerun make_bad.py"
    paths = {name: make_bad.BAD / name for name in SMALL}
    paths.update(make_bad.write(BIG, tmp_path_factory.mktemp("big")))
    return paths


def _check_error(message: str, expect) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for part in expect[1]:
        assert part in message, message


@pytest.mark.parametrize("name", CASES)
def test_cli_check(name, corpus, capsys):
    rc = cli.main(["check", str(corpus[name])])
    out, err = capsys.readouterr()
    expect = CASES[name][1]
    if expect[0] == "error":
        assert rc == 2 and not out
        assert err.startswith("error: ") and err.count("\n") == 1, err
        _check_error(err, expect)
    else:
        assert rc == 0, err
        assert f": {expect[1]} facts" in out
        notes = [line for line in err.splitlines() if line.startswith("note: ")]
        assert len(notes) == len(expect[2]) and all(p in n for p, n in zip(expect[2], notes)), err


@pytest.mark.parametrize("name", CASES)
def test_app_upload(name, corpus, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEOW_MODEL", tiny_dir)
    s, *_ = facts_tab.load_bundled(session.new_session(), "Demo: 8 famous facts", 2)
    s, table, msg, _, _ = facts_tab.upload_facts(s, str(corpus[name]))
    expect = CASES[name][1]
    if expect[0] == "error":
        assert msg.startswith("⚠️") and table == gr.skip() and len(s["facts"]) == 2  # what the user had stays
        _check_error(msg, expect)
    else:
        assert msg.startswith("✅") and len(s["facts"]) == len(table) == expect[1], msg
        for part in expect[2]:
            assert part in msg


def run_cli(*args, env=None):
    """The CLI as a user runs it, with a deadline: a hang fails the test instead of blocking it."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    r = subprocess.run([sys.executable, "-m", "meow_app", *map(str, args)], capture_output=True, text=True,
                       env=e, cwd=ROOT, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_cli_processes_and_limits(corpus, tmp_path, tiny_dir):
    r = run_cli("check", corpus["binary.json"])
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "binary" in r.stderr
    # invert and unlearn read facts with the same reader, before any model is loaded.
    r = run_cli("invert", "--facts", corpus["malformed.jsonl"], "--out", tmp_path / "inv.jsonl", "--model", tiny_dir)
    assert r.returncode == 2 and "malformed.jsonl line 3: invalid JSON" in r.stderr
    r = run_cli("unlearn", "--forget", corpus["latin1.jsonl"], "--out", tmp_path / "run", "--model", tiny_dir)
    assert r.returncode == 2 and "latin1.jsonl line 2: not valid UTF-8" in r.stderr and not (tmp_path / "run").exists()
    # Limits are environment variables and options; a larger file is read only up to the fact limit.
    r = run_cli("check", corpus["many_10000.jsonl"], env={"MEOW_MAX_FACTS": "10000"})
    assert r.returncode == 0 and "10000 facts" in r.stdout
    r = run_cli("check", "--facts", corpus["big_50mb.jsonl"], "--max-file-mb", 60)
    assert r.returncode == 2 and "more than 5000 facts" in r.stderr


def test_cli_limit_options(corpus, capsys):
    assert cli.main(["check", str(corpus["many_10000.jsonl"]), "--max-facts", "10000"]) == 0
    assert cli.main(["check", str(corpus["long_answer.jsonl"]), "--max-text-chars", "10000"]) == 0
    assert cli.main(["check", str(corpus["utf8_bom.csv"]), "--max-file-mb", "0.00001"]) == 2
    out, err = capsys.readouterr()
    assert "10000 facts" in out and ": 1 facts" in out and "over the 1e-05 MB limit" in err


def test_injection_text_is_data(corpus, tiny):
    """Prompt injection inside answers is read as text, asked as text, and escaped in the report."""
    facts = load_facts(corpus["injection.jsonl"])
    assert facts[0].answer == make_bad.INJECTION[0]["answer"]  # kept exactly, not cleaned or run
    result = evaluate.compare(tiny.model, None, tiny.tokenizer, facts, general=False, with_memo=False, max_new_tokens=4)
    page = report.html(result)
    assert "<script>alert('meow')" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;meow&#x27;)&lt;/script&gt;" in page
    chats = [b for b in app.build().blocks.values() if isinstance(b, gr.Chatbot)]
    assert chats and all(c.sanitize_html for c in chats)  # replies show as text in the browser too
