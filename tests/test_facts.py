import json

import pytest

from conftest import SHARED
from meow_app.errors import MeowError
from meow_app.facts import load_facts, write_jsonl


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_jsonl_with_keywords_and_paraphrases(tmp_path):
    p = write(tmp_path, "f.jsonl", json.dumps({"question": "Q1?", "answer": "A1", "keywords": ["A1"],
                                              "paraphrases": ["Q1 again?"], "source": "x"}) + "\n\n"
              + json.dumps({"question": "Q2?", "answer": "A2"}) + "\n")
    facts = load_facts(p)
    assert [f.question for f in facts] == ["Q1?", "Q2?"]
    assert facts[0].keywords == ["A1"] and facts[0].paraphrases == ["Q1 again?"]
    assert facts[0].to_dict()["source"] == "x"  # unknown fields survive a round trip


def test_json_list_and_jsonl_saved_as_json(tmp_path):
    rows = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    assert len(load_facts(write(tmp_path, "a.json", json.dumps(rows)))) == 2
    assert len(load_facts(write(tmp_path, "b.json", "\n".join(json.dumps(r) for r in rows)))) == 2


def test_csv_splits_keywords_and_paraphrases(tmp_path):
    p = write(tmp_path, "f.csv",
              'question,answer,keywords,paraphrases\n'
              '"Who wrote Hamlet?",Shakespeare,Shakespeare;Bard,"Hamlet author?;Writer of Hamlet?"\n')
    (f,) = load_facts(p)
    assert f.keywords == ["Shakespeare", "Bard"] and f.paraphrases == ["Hamlet author?", "Writer of Hamlet?"]


@pytest.mark.parametrize("name,text,message", [
    ("bad.jsonl", '{"question": "Q", "answer": "A"}\n{"question": "Q2", \n', "bad.jsonl line 2: invalid JSON"),
    ("missing.jsonl", '{"question": "Q", "answer": "A"}\n{"question": "Q2"}\n', "line 2: missing field 'answer'"),
    ("empty_answer.jsonl", '{"question": "Q", "answer": "  "}\n', "line 1: field 'answer' is empty"),
    ("types.jsonl", '{"question": 3, "answer": "A"}\n', "line 1: field 'question' must be text"),
    ("cols.csv", "q,answer\nQ,A\n", "line 1: CSV header lacks column(s) question"),
    ("empty.json", "", "file is empty"),
    ("x.txt", "hello", "unknown file type"),
    ("kw.jsonl", '{"question": "Q", "answer": "A", "keywords": 5}\n', "'keywords' must be a list"),
])
def test_errors_name_file_line_and_problem(tmp_path, name, text, message):
    with pytest.raises(MeowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_facts(write(tmp_path, name, text))


def test_binary_and_non_utf8_and_limits(tmp_path):
    b = tmp_path / "bin.json"
    b.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(MeowError, match="binary"):
        load_facts(b)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"question": "Q", "answer": "A"}\n{"question": "caf\xe9", "answer": "A"}\n'.encode("latin-1"))
    with pytest.raises(MeowError, match="line 2: not valid UTF-8"):
        load_facts(latin)
    many = write(tmp_path, "many.jsonl",
                 "".join(json.dumps({"question": f"Q{i}", "answer": "A"}) + "\n" for i in range(11)))
    with pytest.raises(MeowError, match="more than 10 facts"):
        load_facts(many, max_facts=10)
    with pytest.raises(MeowError, match="over the"):
        load_facts(many, max_bytes=100)


def test_write_jsonl_round_trip(tmp_path, facts):
    write_jsonl(facts, tmp_path / "out.jsonl")
    again = load_facts(tmp_path / "out.jsonl")
    assert [f.to_dict() for f in again] == [f.to_dict() for f in facts]


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"question": "Q?", "answer": "A",
                                 "keywords": ["A"]}]).save_to_disk(str(tmp_path / "ds"))
    (f,) = load_facts(tmp_path / "ds")
    assert f.answer == "A" and f.keywords == ["A"]


@pytest.mark.skipif(not SHARED.exists(), reason="shared TOFU data not present")
@pytest.mark.parametrize("name,rows", [("forget01.jsonl", 40), ("forget01_perturbed.jsonl", 40),
                                       ("world_facts.jsonl", 117)])
def test_tofu_files_load_as_they_are(name, rows):
    facts = load_facts(SHARED / name)
    assert len(facts) == rows
    if "perturbed" in name:
        assert facts[0].paraphrases and "perturbed_answer" in facts[0].extra
