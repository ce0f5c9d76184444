"""Start `python app.py` as a subprocess on a free port of 127.0.0.1 and wait until it serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(env: dict, port: int, command: list[str] | None = None, cwd: Path = ROOT,
              inherit_env: bool = True) -> subprocess.Popen:
    """`python app.py` (or `command`) on 127.0.0.1:port; its output goes to MEOW_HOME/app-PORT.log
    (`proc.log_path`). inherit_env=False: only `env` (a program name is looked up on its PATH)."""
    log_path = Path(env.get("MEOW_HOME", "/tmp")) / f"app-{port}.log"
    with open(log_path, "a") as log:
        proc = subprocess.Popen(command or [sys.executable, "app.py"], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                env={**(os.environ if inherit_env else {}), **env, "PORT": str(port),
                                     "GRADIO_ANALYTICS_ENABLED": "False"})
    proc.log_path = log_path
    return proc


def wait_until_serving(proc: subprocess.Popen, url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}: {proc.log_path.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"app did not start in {timeout} s: {proc.log_path.read_text()[-2000:]}")
            time.sleep(0.5)


def stop_app(proc: subprocess.Popen) -> None:
    """End a server process started by a test: politely, then for sure."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def running_app(env: dict, timeout: float = 180, **start):
    """The app serving on a free port for the `with` block; `start`: start_app's options."""
    port = free_port()
    proc = start_app(env, port, **start)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(proc, url, timeout)
        yield url
    finally:
        stop_app(proc)


stop = stop_app  # any server process a test started (the llama.cpp server too)
