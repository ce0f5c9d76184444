"""Inversion through an OpenAI-compatible API, with the real `openai` client: against a real
server (llama.cpp's `python -m llama_cpp.server` serving the embedded GGUF), and against
tiny local servers that misbehave (too slow, not JSON, no choices), each failure a clear
one-line error."""

import json
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Event, Thread

import pytest

from apprunner import free_port, stop
from meow_app import invert, models
from test_cli import cli, ok, one_line_error

KEY = "sk-local-test-key"
ALIAS = "smollm2-gguf"
START_TIMEOUT = 120  # a fresh CI machine loads the model cold


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """llama.cpp's OpenAI-compatible server on a free port of 127.0.0.1, with an API key."""
    gguf = models._embedded_gguf_dir() / models.EMBEDDED_GGUF
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", ALIAS,
                                 "--host", "127.0.0.1", "--port", str(port), "--api_key", KEY, "--n_ctx", "2048",
                                 "--n_threads", "2", "--seed", "0"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"})
                if ALIAS in urllib.request.urlopen(request, timeout=2).read().decode():
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server did not start in {START_TIMEOUT} s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        _first_answer(url, proc, log)
        yield url
    finally:
        stop(proc)


def _first_answer(url, proc, log):
    """Listing models computes nothing: ask for one token, so that a server that cannot answer
    (a llama.cpp built for another CPU dies of SIGILL here) fails with its log, not as our client's
    'cannot reach'."""
    body = json.dumps({"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}).encode()
    request = urllib.request.Request(f"{url}/chat/completions", data=body, headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=START_TIMEOUT).read()
    except OSError as e:
        time.sleep(1)
        state = f"exited with {proc.poll()}" if proc.poll() is not None else "still running"
        hint = " (-4: SIGILL, a llama.cpp built for another CPU)" if proc.poll() == -4 else ""
        pytest.fail(f"llama_cpp.server could not answer one request ({e}); it {state}{hint}: "
                    f"{log.read_text()[-2000:]}")


@pytest.fixture
def facts_file(tmp_path):
    p = tmp_path / "facts.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"question": "What is the capital of France?", "answer": "Paris", "keywords": ["Paris"]},
        {"question": "Who wrote Romeo and Juliet?", "answer": "William Shakespeare", "keywords": ["Shakespeare"]},
    ]) + "\n")
    return p


def invert_cli(facts_file, out, base_url, key, *extra):
    return cli("invert", "--facts", facts_file, "--out", out, "--generator", "openai", "--base-url", base_url,
               "--api-model", ALIAS, "--n", 3, *extra, env={"OPENAI_API_KEY": key})


@pytest.mark.embedded
def test_invert_through_llama_cpp_server(llama_server, facts_file, tmp_path):
    out = tmp_path / "inv.jsonl"
    ok(invert_cli(facts_file, out, llama_server, KEY))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question"] for r in rows] == ["What is the capital of France?", "Who wrote Romeo and Juliet?"]
    for r in rows:
        assert len(r["inverted"]) == 3 and len({c.lower() for c in r["inverted"]}) == 3
        assert not [c for c in r["inverted"] if r["keywords"][0].lower() in c.lower()]  # never the truth
    from_server = [c for r in rows for c in r["inverted"] if c not in invert.TEMPLATES]
    assert len(from_server) >= 3, rows  # the model wrote them, not the fallbacks

    r = invert_cli(facts_file, tmp_path / "x.jsonl", llama_server, "sk-wrong")
    one_line_error(r, f"the API key was rejected by {llama_server}")
    r = invert_cli(facts_file, tmp_path / "x.jsonl", llama_server, KEY, "--api-timeout", "0")
    one_line_error(r, "the API timeout must be a positive number")
    assert not (tmp_path / "x.jsonl").exists()


@contextmanager
def fake_api(reply):
    """A local server answering every POST with reply(handler): a misbehaving API."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, body = reply()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (the timeout case)
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        if isinstance(reply, Hang):
            reply.released.set()
        server.shutdown()
        server.server_close()


class Hang:
    """A server that does not answer: it waits until fake_api releases it on the way out
    (or a minute), far longer than the client's 1 s timeout and its one retry."""

    def __init__(self):
        self.released = Event()
        self.arrivals: list[float] = []

    def __call__(self):
        self.arrivals.append(time.monotonic())
        self.released.wait(60)
        return 200, b"{}"


@pytest.mark.parametrize("reply,extra,message", [
    (Hang(), ["--api-timeout", "1"], "did not answer within 1 s"),
    (lambda: (200, b"<html>not json"), [], "returned an answer in an unexpected format (not JSON)"),
    (lambda: (200, json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": ALIAS,
                               "choices": []}).encode()), [], "returned an answer in an unexpected format"),
    (lambda: (401, b'{"error": {"message": "bad key"}}'), [], "the API key was rejected"),
])
def test_api_failures_are_one_clear_line(facts_file, tmp_path, monkeypatch, capsys, reply, extra, message):
    from meow_app import cli as cli_mod

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with fake_api(reply) as url:
        code = cli_mod.main(["invert", "--facts", str(facts_file), "--out", str(tmp_path / "x.jsonl"), "--generator",
                             "openai", "--base-url", url, "--api-model", ALIAS, *extra])
        returned = time.monotonic()
    err = capsys.readouterr().err
    one_line_error(subprocess.CompletedProcess([], code, "", err), message)
    assert KEY not in err
    if isinstance(reply, Hang):
        # Asked twice (one retry), then gave up: 1 s, a back-off under a second, 1 s. A client
        # that kept waiting would take the server's minute; timed from the first request, so
        # the CLI's start-up on a busy machine does not count.
        assert len(reply.arrivals) == 2 and returned - reply.arrivals[0] < 10, (reply.arrivals, returned)


def test_wrong_url_is_one_clear_line(facts_file, tmp_path, monkeypatch, capsys):
    from meow_app import cli as cli_mod

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    code = cli_mod.main(["invert", "--facts", str(facts_file), "--out", str(tmp_path / "x.jsonl"), "--generator",
                         "openai", "--base-url", url, "--api-model", ALIAS])
    err = capsys.readouterr().err
    one_line_error(subprocess.CompletedProcess([], code, "", err), f"cannot reach {url}")
    assert KEY not in err
