"""Run folders as files: naming a new one, reading run.json and probes.json, zipping one.

The pipeline writes a run folder (pipeline.py: model/, run.json, facts.jsonl, probes.json);
this module is everything else that touches one from outside, for the CLI and the app alike.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

from .errors import MeowError


def new_run_dir(folder: Path | str, method: str) -> Path:
    """A fresh, unique run folder name under `folder` (not created): time, method, 4 random hex digits."""
    return Path(folder) / f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{uuid.uuid4().hex[:4]}"


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MeowError(f"{path}: cannot read ({e})") from None


def run_json(spec) -> dict | None:
    """run.json of a run folder, or None when `spec` is not one (a model id, say)."""
    path = Path(str(spec)).expanduser() / "run.json"
    return _read(path) if path.is_file() else None


def probes_json(run_dir: Path | str) -> dict:
    """probes.json of a run folder: the greedy answers before and after, per question."""
    return _read(Path(run_dir) / "probes.json")


def zip_run(run_dir: Path | str, dest: Path | str | None = None) -> Path:
    """The whole run folder as DEST/NAME.zip (a new temporary folder by default), every file
    under NAME/. Stored, not deflated: model weights barely compress, and deflating them takes long."""
    run_dir = Path(run_dir)
    dest = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="meow-zip-"))
    zipped = dest / f"{run_dir.name}.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(run_dir.rglob("*")):
            if f.is_file():
                z.write(f, f"{run_dir.name}/{f.relative_to(run_dir)}")
    return zipped
