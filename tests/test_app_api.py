"""The app's named API endpoints through gradio_client, against `python app.py` with the
tiny model; and two sessions at once, which must not see each other's facts, runs or chats."""

import json
import threading
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from apprunner import running_app
from hub_server import HubServer

FAST = {"headers": ["setting", "value"], "data": [["epochs", "1"], ["num_batch", "2"], ["lr", "1e-4"]]}
EMPTY_INV = {"headers": ["fact", "question", "inverted answer"], "data": []}
EMPTY_SEL = {"headers": ["fact", "question", "inverted answer", "MEMO", "MEMO of true answer", "use"], "data": []}


HUB_TOKEN = "hf_api_test_token_0123456789"


@pytest.fixture(scope="module")
def hub():
    with HubServer(HUB_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


def run_folder(status: str, home: Path) -> Path:
    """The run a "Done" status names: by its name only (the app shows no server path)."""
    assert str(home) not in status and "/" not in status, status
    name = status.split("Run '")[1].split("'")[0]
    (found,) = home.rglob(name)
    return found


@pytest.fixture(scope="module")
def url(tiny_dir, home, hub):
    # The Publish tab pushes to the local Hub server (tests/hub_server.py) over plain HTTP.
    with running_app({"MEOW_MODEL": tiny_dir, "MEOW_HOME": str(home), "HF_ENDPOINT": hub.url,
                      "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": ""}) as u:
        yield u


def _text(message):
    """Chatbot content as the API sends it: a string, or a list of {"type": "text", "text"} parts."""
    c = message["content"]
    return c if isinstance(c, str) else "".join(part.get("text", "") for part in c)


def _questions(table):
    return [row[0] for row in table["data"]]


def unlearn(client):
    return client.predict("meow", FAST, False, "Local model", 2, "", "", "", 1, "largest", EMPTY_INV, EMPTY_SEL,
                          api_name="/unlearn")


def test_endpoints_walk_the_flow(url, hub, tmp_path):
    client = Client(url, verbose=False)
    table, msg, inv, sel = client.predict("Demo: 8 famous facts", 2, api_name="/load_bundled")
    assert msg.startswith("✅") and len(table["data"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"question\": \"Q\"}]")
    table2, msg, *_ = client.predict(handle_file(str(bad)), api_name="/upload_facts")
    assert msg.startswith("⚠️") and "bad.json" in msg and "answer" in msg
    msg = client.predict("/no/such/model", api_name="/load_model")
    assert msg.startswith("⚠️") and "does not exist" in msg
    inv, msg = client.predict("Local model", 2, "", "", "", api_name="/invert")
    assert msg.startswith("✅") and len(inv["data"]) == 4
    sel, bars, msg = client.predict(inv, 1, "largest", api_name="/score")
    assert sum(1 for row in sel["data"] if row[-1] is True) == 2
    info, hp = client.predict("meow", api_name="/method_info")
    assert "meow" in info and "epochs" in [r[0] for r in hp["data"]]
    status, loss, summary, verdicts = unlearn(client)
    assert status.startswith("✅ Done") and "after" in summary and len(verdicts["data"]) >= 2
    left, right, box = client.predict("Who wrote Hamlet?", api_name="/chat")
    assert _text(left[0]) == _text(right[0]) == "Who wrote Hamlet?" and len(right) == 2
    left, right, verdicts, msg = client.predict(api_name="/probe_forgotten")
    assert len(verdicts["data"]) == 2
    zipped, msg = client.predict(api_name="/download_run")
    assert Path(zipped).suffix == ".zip"
    files, card, msg = client.predict("me/api-cat", False, "", api_name="/publish_preview")
    assert (msg.startswith("✅") and "model.safetensors" in [row[0] for row in files["data"]]
            and "forget 2 facts" in card)
    msg = client.predict("me/api-cat", True, False, "", HUB_TOKEN, api_name="/publish_push")
    assert msg.startswith("✅") and "/me/api-cat" in msg and HUB_TOKEN not in msg
    assert "README.md" in hub.repos["me/api-cat"].files


def test_two_sessions_at_once_do_not_see_each_other(url, home):
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    results = {}

    def walk(name, client, limit):
        table, *_ = client.predict("Famous facts (56)" if name == "a" else "Demo: 8 famous facts", limit,
                                   api_name="/load_bundled")
        status, _, summary, verdicts = unlearn(client)
        left, right, _ = client.predict(f"Hello from {name}", api_name="/chat")
        results[name] = (table, status, verdicts, left)

    threads = [threading.Thread(target=walk, args=("a", a, 1)), threading.Thread(target=walk, args=("b", b, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    (ta, sa, va, la), (tb, sb, vb, lb) = results["a"], results["b"]
    assert sa.startswith("✅ Done") and sb.startswith("✅ Done")
    assert len(ta["data"]) == 1 and len(tb["data"]) == 2
    assert _questions(va) != _questions(vb)
    assert [_text(m) for m in la if m["role"] == "user"] == ["Hello from a"]
    assert [_text(m) for m in lb if m["role"] == "user"] == ["Hello from b"]
    run_a, run_b = run_folder(sa, home), run_folder(sb, home)
    assert Path(run_a).parent != Path(run_b).parent  # one folder per session
    assert json.loads((Path(run_a) / "run.json").read_text())["n_forget"] == 1
    assert json.loads((Path(run_b) / "run.json").read_text())["n_forget"] == 2


def test_an_upload_over_the_facts_limit_is_refused_by_the_web_server(url):
    import urllib.error
    import urllib.request

    from meow_app import facts

    def post(size):
        boundary = "meowboundary"
        body = ((f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jsonl\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode()
                + b"x" * size + f"\r\n--{boundary}--\r\n".encode())
        req = urllib.request.Request(url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    status, text = post(facts.MAX_FILE_BYTES + 1)
    assert status == 413 and "max" in text.lower(), (status, text[:200])
    status, text = post(1000)  # under the limit: stored as usual
    assert status == 200 and "big.jsonl" in text
