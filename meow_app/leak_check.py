"""Nothing forgotten leaves the machine: scan a folder for every forgotten string.

The forgotten strings of a run are the questions, their paraphrases, the true answers,
the keywords and the inverted (false) answers, all read from RUN_DIR/facts.jsonl. Before
anything is uploaded, every file of the upload folder is searched for each of them,
case-insensitively and with runs of whitespace collapsed; one hit refuses the upload.
Answers, keywords and inverted answers are names and short phrases: they are matched as
whole words (Unicode-aware), so "Gates" refuses "Bill Gates" but not the card's
"aggregates". Questions and paraphrases are whole sentences and are matched anywhere.

What is searched, and what is not (the documented rule):
- strings shorter than MIN_CHARS characters, and strings made only of digits and
  punctuation (a year, a count), are not searched: they occur by chance in any config
  ("max_position_embeddings": 8192) and would refuse every upload;
- every file is searched as text; JSON files also after decoding (so "\\u00e9" and
  escaped quotes cannot hide a string);
- in tokenizer files, the vocabulary and merges (tokenizer.json's model.vocab and
  model.merges, vocab.json, merges.txt, vocab.txt, tokenizer.model) are skipped: they are
  the base model's word pieces, which contain ordinary words ("ĠParis") by construction.
  Everything else in tokenizer files (chat template, added tokens) is searched;
- in .safetensors files the JSON header (tensor names, metadata) is searched, not the
  tensor bytes: they are numbers, and random bytes match short strings by chance.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from .errors import MeowError
from .facts import load_facts

MIN_CHARS = 4
VOCABULARY_FILES = {"vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model"}
_NUMBERISH = re.compile(r"^[\d\W_]+$")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


# Kinds matched as whole words; the rest (questions, paraphrases) anywhere in the text.
WHOLE_WORD_KINDS = ("answer", "keyword", "inverted answer")


def forgotten_strings(run_dir) -> list[tuple[str, str]]:
    """(kind, text) for every string of the run's forget set that must not be published."""
    path = Path(run_dir) / "facts.jsonl"
    if not path.is_file():
        raise MeowError(f"{run_dir} has no facts.jsonl: cannot check that nothing forgotten is published")
    out = []
    for i, fact in enumerate(load_facts(path), start=1):
        candidates = fact.extra.get("candidates") or []
        for kind, texts in (("question", [fact.question]), ("paraphrase", fact.paraphrases),
                            ("answer", [fact.answer]), ("keyword", fact.keywords),
                            ("inverted answer", [*fact.inverted, *[c for c in candidates if isinstance(c, str)]])):
            out += [(f"fact {i}'s {kind}", t) for t in texts if t.strip()]
    return out


def searchable(text: str) -> bool:
    text = _norm(text)
    return len(text) >= MIN_CHARS and not _NUMBERISH.match(text)


def _json_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_json_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _json_strings(v)]
    return []


def _safetensors_header(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return ""
        (size,) = struct.unpack("<Q", head)
        return f.read(min(size, 100 * 1024 * 1024)).decode("utf-8", errors="replace")


def searched_text(path: Path) -> str:
    """The text of one file as the scan sees it (see the module docstring)."""
    if path.name in VOCABULARY_FILES:
        return ""
    if path.suffix == ".safetensors":
        return _safetensors_header(path)
    raw = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix != ".json":
        return raw
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    if path.name == "tokenizer.json" and isinstance(data.get("model"), dict):
        data = {**data, "model": {k: v for k, v in data["model"].items() if k not in ("vocab", "merges")}}
        return "\n".join(_json_strings(data))
    return raw + "\n" + "\n".join(_json_strings(data))


def pattern(kind: str, text: str) -> re.Pattern:
    """The search for one forgotten string (normalised). Whole words for the kinds in
    WHOLE_WORD_KINDS: no letter or digit of any script may touch it on either side."""
    needle = re.escape(_norm(text))
    if kind.endswith(WHOLE_WORD_KINDS):
        needle = rf"(?<!\w){needle}(?!\w)"
    return re.compile(needle)


def check_folder(folder, strings: list[tuple[str, str]]) -> int:
    """Raise MeowError at the first file holding a forgotten string; else the number of files checked.
    The message names the file and what kind of string it holds, never the string itself
    (messages end up in logs)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    needles = [(kind, pattern(kind, text)) for kind, text in strings if searchable(text)]
    for path in files:
        text = _norm(searched_text(path))
        for kind, needle in needles:
            if needle.search(text):
                raise MeowError(f"{path.relative_to(folder)} contains a forgotten string ({kind}): nothing was "
                                "published")
    return len(files)
