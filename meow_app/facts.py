"""Facts to forget: read, validate and write question/answer pairs.

A fact is a question and its true answer, with optional `keywords` (the words whose
presence in a generated answer means the fact leaked) and `paraphrases` (other ways to
ask the same question). Files: JSON Lines, JSON (a list, or JSON Lines saved as .json,
as TOFU does), CSV (keywords and paraphrases `;`-separated), or a Hugging Face dataset
(`hf:NAME[:CONFIG][:SPLIT]`, or a folder written by `Dataset.save_to_disk`).

Every problem is reported as a MeowError naming the file, the line and what is wrong.
Text must be UTF-8 (with or without a byte-order mark) or UTF-16 with a byte-order mark.
Limits on file size, number of facts and text length keep one upload from eating the
machine (docs/robustness.md, "Limits"). A fact repeated word for word is kept once; the
same question with another answer is kept (TOFU asks "What is the full name of the
author?" of two authors); both are reported in `FactList.notes`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MeowError

# Limits that keep one upload from eating the machine: environment variables, the
# CLI's --max-* options, or the arguments of load_facts.
MAX_FILE_BYTES = int(os.environ.get("MEOW_MAX_FILE_BYTES", 20_000_000))
MAX_FACTS = int(os.environ.get("MEOW_MAX_FACTS", 5000))
MAX_TEXT_CHARS = int(os.environ.get("MEOW_MAX_TEXT_CHARS", 4000))

# TOFU's perturbed splits name the paraphrase `paraphrased_question`.
_PARAPHRASE_FIELDS = ("paraphrases", "paraphrased_question")


@dataclass
class Fact:
    question: str
    answer: str
    keywords: list[str] = field(default_factory=list)
    paraphrases: list[str] = field(default_factory=list)
    inverted: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # other input fields, written back unchanged

    def to_dict(self) -> dict:
        row = dict(self.extra)
        row["question"] = self.question
        row["answer"] = self.answer
        if self.keywords:
            row["keywords"] = self.keywords
        if self.paraphrases:
            row["paraphrases"] = self.paraphrases
        if self.inverted:
            row["inverted"] = self.inverted
        return row


# How many of a file's notes the CLI and the app show; the rest are counted.
NOTES_SHOWN = 3


class FactList(list):
    """Facts as read, with `notes`: what the reader noticed and the user should know
    (repeated facts), one line each, naming file and line."""

    def __init__(self, items=(), notes=None):
        super().__init__(items)
        self.notes: list[str] = list(notes or [])


def _str_list(value, what: str, where: str, sep: str = ";") -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        items = value.split(sep)
    elif isinstance(value, list):
        items = value
    else:
        raise MeowError(f"{where}: '{what}' must be a list of strings, got {type(value).__name__}")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise MeowError(f"{where}: '{what}' must hold strings, got {type(item).__name__}")
        if item.strip():
            out.append(item.strip())
    return out


def fact_from_row(row, where: str, max_text_chars: int = MAX_TEXT_CHARS) -> Fact:
    """Validate one row (a dict) into a Fact; `where` is "file line N" for messages."""
    if not isinstance(row, dict):
        raise MeowError(f"{where}: expected an object with 'question' and 'answer', got {type(row).__name__}")
    for key in ("question", "answer"):
        if key not in row:
            raise MeowError(f"{where}: missing field '{key}'")
        if not isinstance(row[key], str):
            raise MeowError(f"{where}: field '{key}' must be text, got {type(row[key]).__name__}")
        if not row[key].strip():
            raise MeowError(f"{where}: field '{key}' is empty")
        if len(row[key]) > max_text_chars:
            raise MeowError(f"{where}: field '{key}' is {len(row[key])} characters (limit {max_text_chars}; "
                            "raise it with --max-text-chars or MEOW_MAX_TEXT_CHARS)")
    paraphrases = []
    for name in _PARAPHRASE_FIELDS:
        paraphrases += _str_list(row.get(name), name, where)
    known = {"question", "answer", "keywords", "inverted", *_PARAPHRASE_FIELDS}
    return Fact(
        question=row["question"].strip(),
        answer=row["answer"].strip(),
        keywords=_str_list(row.get("keywords"), "keywords", where),
        paraphrases=paraphrases,
        inverted=_str_list(row.get("inverted"), "inverted", where, sep="\n"),
        extra={k: v for k, v in row.items() if k not in known},
    )


def _rows_jsonl(text: str, name: str):
    # Only "\n" ends a line: str.splitlines() would also cut at U+2028 or U+0085, which
    # JSON leaves unescaped inside strings.
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line), f"{name} line {i}"
        except json.JSONDecodeError as e:
            raise MeowError(f"{name} line {i}: invalid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise MeowError(f"{name} line {i}: JSON nested too deeply to be a fact") from None


def _rows_json(text: str, name: str):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # TOFU ships JSON Lines under a .json name: one object, then "extra data" after it.
        if text.lstrip().startswith("{") and "Extra data" in e.msg:
            return list(_rows_jsonl(text, name))
        raise MeowError(f"{name} line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise MeowError(f"{name}: JSON nested too deeply to be a facts file") from None
    if isinstance(data, dict):
        for key in ("facts", "data", "rows"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list):
        raise MeowError(f"{name}: expected a list of facts, got {type(data).__name__}")
    return [(row, f"{name} item {i}") for i, row in enumerate(data, start=1)]


def _rows_csv(text: str, name: str):
    # newline="": the csv module reads line ends itself (a lone \r too), as its docs ask.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as e:
        raise MeowError(f"{name} line 1: cannot read the CSV header ({e})") from None
    missing = [k for k in ("question", "answer") if k not in header]
    if missing:
        # a quoted name may hold a line end
        found = ", ".join(h.replace("\r", "\\r").replace("\n", "\\n") for h in header)
        raise MeowError(f"{name} line 1: CSV header lacks column(s) {', '.join(missing)} (found: {found or 'nothing'})")
    reader.fieldnames = header
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a field over csv's size limit, from an unclosed quote
            # line_num counts the lines read before the bad row, which starts on the next one.
            raise MeowError(f"{name} line {reader.line_num + 1}: cannot read CSV ({e})") from None
        line = reader.line_num
        if None in row:
            raise MeowError(f"{name} line {line}: more values than columns")
        yield {k: v for k, v in row.items() if v is not None}, f"{name} line {line}"


def _read_text(path: Path, max_bytes: int) -> str:
    if not path.is_file():
        raise MeowError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise MeowError(f"{path}: file is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB limit "
                        "(raise it with --max-file-mb or MEOW_MAX_FILE_BYTES)")
    if size == 0:
        raise MeowError(f"{path}: file is empty")
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            line = raw[: e.start].decode("utf-16", errors="replace").count("\n") + 1
            raise MeowError(f"{path} line {line}: not valid UTF-16 text") from None
    if b"\x00" in raw[:4096]:
        raise MeowError(f"{path}: looks like a binary file, not text "
                        "(save facts as UTF-8, or UTF-16 with a byte-order mark)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise MeowError(f"{path} line {line}: not valid UTF-8 text (another encoding, e.g. Latin-1? "
                        "save it as UTF-8)") from None


def _rows_dataset(spec: str):
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a requirement
        raise MeowError("reading Hugging Face datasets needs the 'datasets' package") from None
    try:
        if spec.startswith("hf:"):
            parts = spec[3:].split(":")
            name, config = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None)
            split = parts[2] if len(parts) > 2 else "train"
            ds = datasets.load_dataset(name, config, split=split)
        else:
            ds = datasets.load_from_disk(spec)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    except Exception as e:  # datasets raises many types; the user needs the message
        raise MeowError(f"{spec}: cannot load dataset "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return [(row, f"{spec} row {i}") for i, row in enumerate(ds, start=1)]


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def load_facts(source, max_facts: int | None = None, max_bytes: int | None = None,
               max_text_chars: int | None = None) -> FactList:
    """Read facts from a file path, a dataset spec, or a list of dicts (limits: None = the default)."""
    max_facts = MAX_FACTS if max_facts is None else max_facts
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    max_text_chars = MAX_TEXT_CHARS if max_text_chars is None else max_text_chars
    if isinstance(source, list):
        rows = [(row, f"row {i}") for i, row in enumerate(source, start=1)]
    else:
        spec = str(source)
        path = Path(spec)
        if spec.startswith("hf:") or (path.is_dir()
                                      and any((path / f).exists()
                                              for f in ("dataset_info.json", "state.json", "dataset_dict.json"))):
            rows = _rows_dataset(spec)
        elif path.is_dir():
            raise MeowError(f"{path}: is a folder, not a facts file or a saved dataset")
        else:
            text = _read_text(path, max_bytes)
            suffix = path.suffix.lower()
            if suffix == ".jsonl":
                rows = _rows_jsonl(text, str(path))
            elif suffix == ".json":
                rows = _rows_json(text, str(path))
            elif suffix == ".csv":
                rows = _rows_csv(text, str(path))
            else:
                raise MeowError(f"{path}: unknown file type '{suffix}' (use .jsonl, .json or .csv)")
    facts = FactList()
    first: dict[tuple[str, str], str] = {}   # (question, answer) -> where it was first seen
    asked: dict[str, str] = {}               # question -> where it was first seen
    for row, where in rows:
        fact = fact_from_row(row, where, max_text_chars)
        q, a = _key(fact.question), _key(fact.answer)
        if (q, a) in first:
            facts.notes.append(f"{where}: same question and answer as {first[q, a]}; kept once")
            continue
        if q in asked:
            facts.notes.append(f"{where}: same question as {asked[q]} with another answer; both kept")
        first[q, a] = where
        asked.setdefault(q, where)
        if len(facts) >= max_facts:
            raise MeowError(f"{source}: more than {max_facts} facts (the limit; split the file, or raise it "
                            "with --max-facts or MEOW_MAX_FACTS)")
        facts.append(fact)
    if not facts:
        raise MeowError(f"{source}: contains no facts")
    return facts


def write_jsonl(rows, path) -> None:
    """Write dicts (or Facts) as JSON Lines, atomically: a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.to_dict() if isinstance(row, Fact) else row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_lines(path) -> list[str]:
    """Non-empty lines of a plain text file (e.g. the refusal answers)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
