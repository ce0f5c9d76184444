"""Killed mid-training (SIGKILL: no `finally`, no clean-up): the CLI leaves no RUN_DIR and a
later run into the same folder works; the app, killed during a job, restarts on the same
port and runs folder and serves."""

import json
import os
import signal
import subprocess
import sys
import time

from gradio_client import Client

from apprunner import free_port, start_app, stop_app, wait_until_serving
from conftest import ROOT
from test_app_api import EMPTY_INV, EMPTY_SEL, FAST

LONG = {"headers": ["setting", "value"], "data": [["epochs", "500"], ["num_batch", "8"], ["lr", "1e-4"],
                                                  ["early_stop", "false"]]}


def _unlearn_cmd(facts, run, model, *options):
    return [sys.executable, "-m", "meow_app", "unlearn", "--forget", str(facts), "--out", str(run), "--model", model,
            "--n", "2", "--top-k", "1", *options]


def test_sigkill_mid_training_leaves_no_run_and_the_next_run_works(tmp_path, tiny_dir):
    facts = ROOT / "assets" / "facts" / "demo_forget.jsonl"
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_unlearn_cmd(facts, run, tiny_dir, "--epochs", "500", "--no-early-stop"), cwd=ROOT,
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    try:
        for line in proc.stderr:  # progress lines: "  [#---] step 1 of at most 4000, ...  epoch 1  loss ..."
            if "] step 1 of" in line or time.time() > deadline:
                break
        assert proc.poll() is None and "] step 1 of" in line, "training never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not run.exists()  # no half-written RUN_DIR/model: the run was still in its hidden folder
    assert [p.name for p in tmp_path.iterdir()] == [f".run.partial-{proc.pid}"]

    r = subprocess.run(_unlearn_cmd(facts, run, tiny_dir, "--epochs", "1", "--num-batch", "1", "--no-early-stop"),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (run / "model" / "model.safetensors").is_file() and json.loads((run / "run.json").read_text())["steps"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the killed run's leftovers are cleaned up


def _wait_for_training(job, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(isinstance(o, (list, tuple)) and "Training: step" in str(o[0]) for o in job.outputs()):
            return
        assert not job.done(), job.outputs()[-1:]
        time.sleep(0.3)
    raise AssertionError("the app's job never reached training")


def test_app_killed_during_a_job_restarts_and_serves(tmp_path, tiny_dir):
    env = {"MEOW_MODEL": tiny_dir, "MEOW_HOME": str(tmp_path / "home"), "MEOW_RUNS": str(tmp_path / "runs")}
    (tmp_path / "home").mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = start_app(env, port)
    try:
        wait_until_serving(proc, url)
        client = Client(url, verbose=False)
        client.predict("Demo: 8 famous facts", 2, api_name="/load_bundled")
        job = client.submit("meow", LONG, False, "Local model", 2, "", "", "", 1, "largest", EMPTY_INV, EMPTY_SEL,
                            api_name="/unlearn")
        _wait_for_training(job)
    finally:
        proc.kill()  # SIGKILL
        proc.wait(30)
    runs = tmp_path / "runs"
    (session,) = runs.iterdir()
    assert [p.name.split(".partial-")[1] for p in session.iterdir()] == [str(proc.pid)]  # only the hidden partial

    proc = start_app(env, port)  # the same port and runs folder
    try:
        wait_until_serving(proc, url)
        assert not list(session.iterdir())  # the killed app's partial run is removed on start
        client = Client(url, verbose=False)
        client.predict("Demo: 8 famous facts", 1, api_name="/load_bundled")
        status, *_ = client.predict("meow", FAST, False, "Local model", 2, "", "", "", 1, "largest", EMPTY_INV,
                                    EMPTY_SEL, api_name="/unlearn")
        assert status.startswith("✅ Done"), status
    finally:
        stop_app(proc)
    assert "Traceback" not in proc.log_path.read_text()
