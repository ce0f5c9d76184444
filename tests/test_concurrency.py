"""Four sessions at once on `python app.py` (127.0.0.1, the tiny model) through gradio_client:
two unlearn, one uploads a file, one writes inverted answers through an OpenAI-compatible
API (a real local HTTP server) with a key typed into the page. No cross-talk of facts,
runs or chats; the original weights are untouched; model jobs run one at a time and the
waiting ones see their place in the queue; a running job can be cancelled; the key and
the Hub token appear nowhere the app writes."""

import hashlib
import json
import threading
import time
from pathlib import Path

from gradio_client import Client, handle_file
from gradio_client.utils import Status

from apprunner import running_app
from openai_stub import WRONG, openai_stub
from test_app_api import EMPTY_INV, EMPTY_SEL, FAST, _text, run_folder
from test_crash import LONG, _wait_for_training

KEY = "sk-test-SECRET-9d2e71c04b"
HF_TOKEN = "hf_testSECRETb81f3a95c2"
BAD = Path(__file__).resolve().parent / "data" / "bad"


def weights_hash(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _queue_rank(job, running, timeout=120):
    """The place in the queue a job is told while another one runs (None if never told)."""
    deadline = time.time() + timeout
    while not running.done() and not job.done() and time.time() < deadline:
        st = job.status()
        if st.code == Status.IN_QUEUE and st.rank is not None:
            return st.rank
        time.sleep(0.2)
    return None


def _unlearn(client, table, **kw):
    return client.submit("meow", table, False, "Local model", 2, "", "", "", 1, "largest", EMPTY_INV, EMPTY_SEL,
                         api_name="/unlearn", **kw)


def _users(chat):
    return [_text(m) for m in chat if m["role"] == "user"]


def test_four_sessions_two_jobs_queue_cancel_and_no_secrets(tiny_dir, tmp_path):
    before = weights_hash(tiny_dir)
    home, runs = tmp_path / "home", tmp_path / "runs"
    home.mkdir()
    with openai_stub("ok") as api, running_app({"MEOW_MODEL": tiny_dir, "MEOW_HOME": str(home),
                                                "MEOW_RUNS": str(runs), "HF_TOKEN": HF_TOKEN}) as url:
        a, b, c, d = (Client(url, verbose=False) for _ in range(4))
        ta, *_ = a.predict("Demo: 8 famous facts", 1, api_name="/load_bundled")
        tb, *_ = b.predict("Famous facts (56)", 2, api_name="/load_bundled")
        *_, msg_bad, _, _ = c.predict(handle_file(str(BAD / "malformed.jsonl")), api_name="/upload_facts")
        tc, msg_c, _, _ = c.predict(handle_file(str(BAD / "unicode_rtl.jsonl")), api_name="/upload_facts")
        td, *_ = d.predict("Hold-out facts (16)", 3, api_name="/load_bundled")
        assert msg_bad.startswith("⚠️") and "malformed.jsonl line 3: invalid JSON" in msg_bad
        assert msg_c.startswith("✅") and tc["data"][0][0] == "ما هي عاصمة مصر؟"

        long_job = _unlearn(a, LONG)  # holds the one model slot...
        _wait_for_training(long_job)
        b_job = _unlearn(b, FAST)  # ...so these wait, and are told where they stand
        c_job = c.submit("Hello from c", api_name="/chat")
        d_job = d.submit("OpenAI-compatible API", 2, api.url, "stub", KEY, api_name="/invert")
        rank = _queue_rank(b_job, long_job)
        assert rank is not None and rank >= 0 and not b_job.done() and not long_job.done()
        assert a.predict(api_name="/cancel").startswith("ℹ️ Cancelling")
        assert "Cancelled" in long_job.result()[0]

        status_b, _, summary_b, verdicts_b = b_job.result()
        left_c, right_c, _ = c_job.result()
        inv_d, msg_d = d_job.result()
        status_a, *_ = _unlearn(a, FAST).result()
        chats = {}

        def say(name, client):
            chats[name] = client.predict(f"Hello from {name}", api_name="/chat")[0]

        threads = [threading.Thread(target=say, args=(n, cl)) for n, cl in (("a", a), ("b", b), ("d", d))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        log = Path(home, f"app-{url.rsplit(':', 1)[1].strip('/')}.log").read_text()

    # Each session saw only its own facts, runs and chats.
    assert len(ta["data"]) == 1 and len(tb["data"]) == 2 and len(tc["data"]) == 6 and len(td["data"]) == 3
    assert status_a.startswith("✅ Done") and status_b.startswith("✅ Done"), (status_a, status_b)
    run_a, run_b = (run_folder(s, runs) for s in (status_a, status_b))
    assert run_a.parent != run_b.parent and run_a.parent.parent == run_b.parent.parent == runs
    assert json.loads((run_a / "run.json").read_text())["n_forget"] == 1
    assert json.loads((run_b / "run.json").read_text())["n_forget"] == 2
    assert [p for p in run_a.parent.iterdir()] == [run_a]  # the cancelled run left nothing
    assert {r[1] for r in verdicts_b["data"]} <= ({r[0] for r in tb["data"]}
                                                  | {p for r in tb["data"] for p in r[3].split("; ")})
    assert _users(left_c) == ["Hello from c"] and "no unlearned model" in _text(right_c[1])
    assert {n: _users(ch) for n, ch in chats.items()} == {"a": ["Hello from a"], "b": ["Hello from b"],
                                                          "d": ["Hello from d"]}
    assert msg_d.startswith("✅") and {r[1] for r in inv_d["data"]} == {r[0] for r in td["data"]}
    assert {r[2] for r in inv_d["data"]} <= set(WRONG)
    # The original model is shared read-only: its weights are the same bytes as before.
    assert weights_hash(tiny_dir) == before
    # The key reached the API, and nothing the app wrote holds it or the Hub token.
    assert api.seen_keys and set(api.seen_keys) == {f"Bearer {KEY}"}
    for secret in (KEY, HF_TOKEN):
        assert secret not in log
        for f in list(home.rglob("*")) + list(runs.rglob("*")):
            assert not f.is_file() or secret.encode() not in f.read_bytes(), f
