"""The original model's greedy answers to the shipped questions, kept between runs.

Every run asks the unchanged original model the same shipped questions: the everyday
questions (before training, to show collateral damage) and the neighbour questions and
general prompts whose answers it holds or trains on. A checkpoint's greedy answer to a
question does not change from one run to the next, so they are kept on disk, one JSON file
per model state: MEOW_HOME/answers/<key>.json. The key is a digest of what an answer
depends on: the weights themselves (two sums per tensor: a model changed in memory, an
unlearned one say, gets another key), the model's and its generation's configs, the
tokenizer's size and chat template, the device type and dtype, the torch and transformers
versions and the decoding code itself (model_key).

Beside them, `vectors` keeps the shipped neighbour pool's embeddings (neighbours.nearest),
MEOW_HOME/answers/<key>.<name>.pt, computed once per model state instead of every run, and
`states` the patched layer's inputs on the shipped preserved rows (methods/meow_patch.py).

Only shipped questions go in (pipeline.py decides): never a user's facts, so nothing of
what a user asks to forget is written outside the run folder. MEOW_ANSWER_CACHE=0 turns it
off; a cache that cannot be written is skipped, never an error. Each new model state, library
version or decoding code makes a new key, so only the files of the KEEP model states used most
recently stay (prune).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch

from . import generation

ENV = "MEOW_ANSWER_CACHE"
VERSION = 1  # of what the cache holds and how it is keyed: a new one starts afresh
KEEP = 4  # model states whose files stay (the most recently used): a code upgrade orphans the old ones


@torch.no_grad()
def model_key(model, tokenizer) -> str:
    """A digest of the model state and everything else a greedy answer depends on: the
    weights (float64 sums, which see a 1e-6 change in a 50M-element tensor), the model's and
    its generation's configs, the tokenizer, device, dtype, the versions of the libraries and
    of the decoding code (generation.py's source: a change there is a change of answers)."""
    import transformers

    params = list(model.named_parameters())
    # (each tensor's sums to the CPU on its own: a model spread over devices has no one device)
    sums = torch.stack([torch.stack([p.sum(dtype=torch.float64), p.abs().sum(dtype=torch.float64)]).cpu()
                        for _, p in params])
    first = params[0][1]
    h = hashlib.sha256(sums.numpy().tobytes())
    h.update(json.dumps([[name, list(p.shape)] for name, p in params]).encode())
    h.update(model.config.to_json_string().encode())
    generation_config = getattr(model, "generation_config", None)
    h.update((generation_config.to_json_string() if generation_config is not None else "").encode())
    h.update(Path(generation.__file__).read_bytes())
    h.update(json.dumps([VERSION, len(tokenizer), getattr(tokenizer, "chat_template", None), first.device.type,
                         str(first.dtype), torch.__version__, transformers.__version__]).encode())
    return h.hexdigest()[:32]


class AnswerCache:
    """generation.answer with a memory: the same signature, answers read from and added to `path`."""

    def __init__(self, path: Path, model=None):
        self.path = Path(path)
        self.model = model  # the model it keeps answers of (None: the caller vouches); others are passed through
        self.saved: dict[str, str] = self._read()
        self.hits = self.misses = 0
        # Shipped questions a run asked and then left out (their answer names a fact being
        # forgotten: pipeline.anchor_facts): where a method keeps the others' `states`, it keeps
        # theirs too, so which rows are kept does not tell which answers named such a fact.
        self.left_out: list[tuple[str, str]] = []

    @classmethod
    def for_model(cls, model, tokenizer, home: Path | None = None) -> "AnswerCache | None":
        """The model's cache under `home` (default: MEOW_HOME); None when MEOW_ANSWER_CACHE=0."""
        if os.environ.get(ENV, "1").strip() == "0":
            return None
        from .models import meow_home

        key = model_key(model, tokenizer)
        folder = Path(home or meow_home()) / "answers"
        for p in folder.glob(f"{key}.*"):  # (used now: its files are the last a prune deletes)
            try:
                os.utime(p)
            except OSError:
                pass
        prune(folder, key)
        return cls(folder / f"{key}.json", model)

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or unreadable: start afresh
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self) -> None:
        merged = {**self._read(), **self.saved}  # (another run may have added answers meanwhile)
        # Two runs writing at once can each drop the other's new answers: asked again next time.
        _replace(self.path, lambda tmp: Path(tmp).write_text(json.dumps(merged, ensure_ascii=False), encoding="utf-8"))

    def answer(self, model, tokenizer, questions: list[str], max_new_tokens: int = generation.MAX_NEW_TOKENS,
               batch_size: int = generation.ANSWER_BATCH, system: str | None = None) -> list[str]:
        if self.model is not None and model is not self.model:  # (an unlearned copy, say): asked, not kept
            return generation.answer(model, tokenizer, questions, max_new_tokens, batch_size, system)
        keys = [json.dumps([max_new_tokens, system, q]) for q in questions]
        missing = list(dict.fromkeys((k, q) for k, q in zip(keys, questions) if k not in self.saved))
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            answers = generation.answer(model, tokenizer, [q for _, q in missing], max_new_tokens, batch_size, system)
            self.saved.update((k, a) for (k, _), a in zip(missing, answers))
            self._write()
        return [self.saved[k] for k in keys]

    def vectors(self, model, name: str, texts: list[str], compute, code: bytes = b"") -> torch.Tensor:
        """compute(texts) (a tensor, one row per text), kept beside the answers as
        <key>.<name>.pt: a shipped pool's embeddings, computed once per model. `code`: the
        source they come from, so a change there computes them afresh."""
        if self.model is not None and model is not self.model:
            return compute(texts)
        path = self.path.with_suffix(f".{name}.pt")
        tag = hashlib.sha256(code + json.dumps(texts).encode()).hexdigest()
        try:
            saved = torch.load(path, weights_only=True)
            if saved["tag"] == tag and saved["vectors"].ndim == 2 and saved["vectors"].shape[0] == len(texts):
                return saved["vectors"]
        except Exception:  # none yet, or unreadable (a torn or foreign file): computed afresh
            pass
        vectors = compute(texts)
        _replace(path, lambda tmp: torch.save({"tag": tag, "vectors": vectors.cpu()}, tmp))
        return vectors

    def states(self, name: str, rows: list[list[int]], compute, code: bytes = b"") -> list[torch.Tensor]:
        """compute(rows) (one tensor per row of token ids, its first dimension the row's length:
        a layer's inputs at each token, say), kept beside the answers as <key>.<name>.pt by each
        row's ids: the shipped questions' rows read through the unchanged model once per model
        state. Only the rows not kept yet are computed. The caller vouches that `compute` reads
        this cache's model (or a float32 copy of it) and that `name` says how (layer, precision);
        `code`: the source the states come from, so a change there computes them afresh."""
        path = self.path.with_suffix(f".{name}.pt")
        tag = hashlib.sha256(code).hexdigest()
        keys = [_row_key(r) for r in rows]
        kept = self._read_states(path, tag)
        fits = {k: kept[k] for k, r in zip(keys, rows) if k in kept and kept[k].shape[0] == len(r)}
        todo = list({k: r for k, r in zip(keys, rows) if k not in fits}.items())
        if todo:
            made = compute([r for _, r in todo])
            fits.update((k, x.detach().float().cpu()) for (k, _), x in zip(todo, made))
            merged = {**self._read_states(path, tag), **{k: fits[k] for k, _ in todo}}
            _replace(path, lambda tmp: torch.save({"tag": tag, "rows": merged}, tmp))
        return [fits[k] for k in keys]

    @staticmethod
    def _read_states(path: Path, tag: str) -> dict[str, torch.Tensor]:
        try:
            saved = torch.load(path, weights_only=True)
            rows = saved["rows"] if saved["tag"] == tag else {}
            return {k: x for k, x in rows.items() if isinstance(k, str) and torch.is_tensor(x) and x.ndim == 2}
        except Exception:  # none yet, or unreadable (a torn or foreign file): computed afresh
            return {}


def prune(folder: Path, current: str, keep: int = KEEP) -> list[str]:
    """Deletes the files (<key>.json, <key>.<name>.pt) of all but the `keep` model states used
    most recently (at least the current one), by their newest file's time, `current` counted as
    in use. Only files named so are touched (not a file being written, nor one of the user's).
    The keys deleted."""
    last: dict[str, float] = {}
    files: dict[str, list[Path]] = {}
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    for p in entries:
        named = _FILE.fullmatch(p.name)
        if named is None or not p.is_file():
            continue
        key = named.group(1)
        try:
            last[key] = max(last.get(key, 0.0), p.stat().st_mtime)
        except OSError:
            continue
        files.setdefault(key, []).append(p)
    last[current] = float("inf")
    gone = sorted(last, key=last.get, reverse=True)[max(1, keep):]
    for key in gone:
        for p in files.get(key, []):
            try:
                p.unlink()
            except OSError:  # (another run deleted it first, or a read-only folder)
                pass
    return gone


_FILE = re.compile(r"([0-9a-f]{32})(?:\.json|\.[A-Za-z0-9_.-]+\.pt)")


def _row_key(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:32]


def _replace(path: Path, save) -> None:
    """save(tmp) to a new file beside `path`, then moved over it: a reader sees the old file
    or the new one. A cache that cannot be written is skipped, never an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    os.close(fd)
    try:
        save(tmp)
        os.replace(tmp, path)
    except Exception:  # (torch.save on a full disk raises RuntimeError, not OSError)
        Path(tmp).unlink(missing_ok=True)
