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


@contextmanager
def running_app(env: dict, timeout: float = 180):
    port = free_port()
    log = open(Path(env.get("MEOW_HOME", "/tmp")) / f"app-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **env, "PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"app did not start in {timeout} s: {Path(log.name).read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen) -> None:
    """End a server process started by a test: politely, then for sure."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
