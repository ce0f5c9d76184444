"""Publish a run to the Hugging Face Hub: the model (or its LoRA adapter), a model card and
an evaluation summary, and nothing that was forgotten.

    folder = build_folder(run_dir, out, repo_id)          # what `push --dry-run --out` writes
    url = push(run_dir, repo_id, token)                   # builds the same folder, then uploads it

One function builds the upload folder for both. It holds the model files, README.md (the
model card), meow_run.json (the run's settings and numbers, rebuilt field by field from
run.json, never copied) and eval_summary.json (aggregates only). facts.jsonl and
probes.json, which hold the forgotten text, are never part of it; and before anything is
written to the Hub, leak_check scans every file for every forgotten string (and for the
token) and refuses on a hit. The token is passed to the client and nowhere else.

The Hub is HF_ENDPOINT (default huggingface.co); the tests point it at a local server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from . import leak_check, methods, model_card, models, runs
from .errors import MeowError

# Model files copied next to an adapter: the tokenizer, so the repo loads on its own.
_WEIGHTS = re.compile(r"(^model.*\.safetensors$)|(\.safetensors\.index\.json$)|(^(config|generation_config)\.json$)")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
EVAL_REPORT = "report.json"  # `evaluate --out RUN_DIR/report.json`: its aggregates join the summary


def check_repo_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise MeowError(f"repository id must look like USER/NAME (letters, digits, '-', '_', '.'), got '{repo_id}'")
    return repo_id


def _read_run(run_dir: Path) -> dict:
    run = runs.run_json(run_dir)
    if run is None or not (run_dir / "model" / "config.json").is_file():
        raise MeowError(f"{run_dir} is not a run folder (it needs run.json and model/ from `unlearn`)")
    return run


def base_model_id(run: dict, override: str | None = None) -> str | None:
    """The Hub id of the model that was unlearned; None for a local folder (its path stays private)."""
    if override:
        return check_repo_id(override)
    name = str(run.get("model") or "")
    if name == models.EMBEDDED_NAME:
        return models.EMBEDDED_HUB_ID
    if _REPO_ID.match(name) and not Path(name).expanduser().exists():
        return name
    return None


def _numbers(value):
    """Only the numbers (and flags) of a nested structure: no text can pass."""
    if isinstance(value, dict):
        return {str(k): _numbers(v) for k, v in value.items() if not isinstance(v, str)}
    if isinstance(value, list):
        return [_numbers(v) for v in value if not isinstance(v, str)]
    return value if value is None or isinstance(value, (bool, int, float)) else None


def run_metadata(run: dict, base_model: str | None) -> dict:
    """meow_run.json: the run's record rebuilt from named fields. Settings keep their text
    values (a setting's value is not a fact); everything else keeps numbers only."""
    settings = run.get("settings") or {}
    invert = settings.get("invert") or {}
    return {
        "format": "meow-run/1",
        "method": run["method"],
        "base_model": base_model,
        "n_forget": run["n_forget"],
        "n_retain": run.get("n_retain", 0),
        "seed": run.get("seed"),
        "train": {k: v for k, v in (settings.get("train") or {}).items() if isinstance(v, (bool, int, float, str))},
        # The generator's kind and count; not its base URL or model name (they may be private).
        "invert": {k: invert.get(k) for k in ("generator", "n", "answer_style", "answer_clause", "clean_targets",
                                              "truth_forms", "name_lead")},
        "select": _numbers(settings.get("select") or {}) | {"strategy": (settings.get("select") or {}).get("strategy")},
        "stopped_early": bool(run.get("stopped_early")),
        "seconds_total": run.get("seconds_total"),
        "timings": _numbers(run.get("timings") or {}),
        "loss": [round(s["loss"], 6) for s in run.get("steps") or [] if isinstance(s.get("loss"), (int, float))],
        "probes": _numbers(run.get("probes") or []),
        "method_info": _numbers(run.get("method_info") or {}),
        "summary": _numbers(run["summary"]),
        "software": {"torch": run.get("torch"), "python": run.get("python"), "device": run.get("device")},
    }


def evaluation_summary(run_dir: Path) -> dict | None:
    """Aggregates of RUN_DIR/report.json (from `evaluate`), numbers only; None without one."""
    path = run_dir / EVAL_REPORT
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MeowError(f"{path}: cannot read ({e})") from None
    sets = {name: {side: _numbers(scored.get("aggregate") or {}) for side, scored in sides.items()}
            for name, sides in (report.get("sets") or {}).items()}
    general = {side: {k: v for k, v in g.items() if k.endswith("_accuracy")}
               for side, g in (report.get("general") or {}).items()}
    relearn = report.get("relearn")
    return {"sets": sets, "mia": _numbers(report.get("mia") or {}), "general": _numbers(general),
            "relearn": _numbers({"before": relearn["before"], "after": relearn["after"]}) if relearn else None}


def _hyperparameters(meta: dict) -> list[tuple[str, object]]:
    cls = methods.REGISTRY.get(meta["method"])
    names = list(getattr(cls, "hyperparameters", ("epochs", "lr")))
    names += [n for n in ("lr", "epochs", "batch_size", "lora_r", "lora_alpha") if n not in names]
    rows = [(n, meta["train"][n]) for n in names
            if n in meta["train"] and (n[:4] != "lora" or meta["train"].get("lora"))]
    if meta["invert"].get("n") and cls is not None and cls.needs_inverted:
        rows += [("inverted answers per fact", meta["invert"]["n"]),
                 ("kept per fact (top-k)", meta["select"].get("top_k"))]
    return rows


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_folder(run_dir, out, repo_id: str, adapter_only: bool = False, base_model: str | None = None,
                 secrets: tuple[str, ...] = ()) -> Path:
    """Write the upload folder for a run into `out` (new or empty) and check it for leaks.
    On a leak the folder is removed and MeowError names the file and the kind of string."""
    run_dir, out = Path(run_dir).expanduser(), Path(out).expanduser()
    repo_id = check_repo_id(repo_id)
    run = _read_run(run_dir)
    forgotten = leak_check.forgotten_strings(run_dir)
    base = base_model_id(run, base_model)
    if adapter_only:
        if not (run_dir / "adapter" / "adapter_config.json").is_file():
            raise MeowError(f"{run_dir} has no LoRA adapter (adapter/): it was trained without --lora, "
                            "so only the merged model can be pushed")
        if base is None:
            raise MeowError("the base model is a local folder: give its Hub id with --base-model, "
                            "so the adapter can be loaded on top of it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MeowError(f"{out} already exists and is not empty: choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    try:
        model_files = sorted(p for p in (run_dir / "model").rglob("*") if p.is_file())
        if adapter_only:
            for p in model_files:
                if not _WEIGHTS.search(p.name):
                    _copy(p, out / p.relative_to(run_dir / "model"))
            config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = base  # the local path it was trained from stays private
            _write_json(out / "adapter_config.json", config)
            _copy(run_dir / "adapter" / "adapter_model.safetensors", out / "adapter_model.safetensors")
        else:
            for p in model_files:
                _copy(p, out / p.relative_to(run_dir / "model"))
        meta = run_metadata(run, base)
        evaluation = evaluation_summary(run_dir)
        _write_json(out / "meow_run.json", meta)
        _write_json(out / "eval_summary.json", {"format": "meow-eval-summary/1", "run": meta["summary"],
                                                "evaluation": evaluation})
        cls = methods.REGISTRY.get(meta["method"])
        card = model_card.build(meta, repo_id, getattr(cls, "description", meta["method"]), _hyperparameters(meta),
                                evaluation, adapter_only)
        card.save(out / "README.md")
        leak_check.check_folder(out, forgotten + [("the Hub token", s) for s in secrets if s])
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _hub_error(e: Exception, repo_id: str, endpoint: str, token: str) -> MeowError:
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    status = getattr(getattr(e, "response", None), "status_code", None)
    if status == 401 and not isinstance(e, RepositoryNotFoundError):
        text = f"the Hub at {endpoint} rejected the token (401): check HF_TOKEN or sign in again"
    elif status == 403:
        text = f"the token may not write to {repo_id} (403): use a token with write access to that namespace"
    elif isinstance(e, RepositoryNotFoundError):
        text = f"repository {repo_id} was not found at {endpoint} and could not be created"
    elif isinstance(e, HfHubHTTPError):
        first = (getattr(e, "server_message", None) or str(e)).strip().splitlines()
        text = f"the Hub at {endpoint} answered {status}: {first[0] if first else type(e).__name__}"
    else:
        text = f"cannot reach the Hub at {endpoint}: {type(e).__name__}"
    return MeowError(text.replace(token, "***") if token else text)


def push(run_dir, repo_id: str, token: str | None, private: bool = False, adapter_only: bool = False,
         base_model: str | None = None, endpoint: str | None = None) -> dict:
    """Create the repo if missing and upload the run's folder in one commit.
    Returns {"url", "commit_url", "files"}."""
    from huggingface_hub import CommitOperationAdd, HfApi

    repo_id = check_repo_id(repo_id)
    if not token:
        raise MeowError("no Hugging Face token: set HF_TOKEN (a token with write access), or sign in in the app")
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    with tempfile.TemporaryDirectory(prefix="meow-push-") as tmp:
        folder = build_folder(run_dir, Path(tmp) / "upload", repo_id, adapter_only, base_model, secrets=(token,))
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        meta = json.loads((folder / "meow_run.json").read_text(encoding="utf-8"))
        api = HfApi(endpoint=endpoint, token=token)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files]
            what = "LoRA adapter" if adapter_only else "model"
            commit = api.create_commit(repo_id, ops, commit_message=f"Unlearned {what} from MEOW Studio "
                                                                    f"({meta['method']}, {meta['n_forget']} facts)")
        except MeowError:
            raise
        except Exception as e:  # the client's HTTP and connection errors: one clear line
            if type(e).__module__.split(".")[0] not in ("huggingface_hub", "httpx", "httpx2", "httpcore", "requests") \
                    and not isinstance(e, OSError):
                raise
            raise _hub_error(e, repo_id, endpoint, token) from None
    return {"url": str(url), "commit_url": commit.commit_url, "files": files}
