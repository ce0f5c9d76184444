"""`push` end to end: the real huggingface_hub client against a local Hub server
(tests/hub_server.py), on a LoRA run of the tiny model. What reached the server is checked
byte by byte: the files, the model card, no forgotten string, the token only in
Authorization headers. The main push runs the CLI as a subprocess; the error cases call
the same `cli.main` in this process (seconds instead of a Python start each)."""

import json
import shutil
import subprocess

import pytest
import torch
from huggingface_hub import ModelCard

from hub_server import HubServer
from meow_app import leak_check, publish
from meow_app.errors import MeowError
from test_cli import cli, ok, one_line_error

TOKEN = "hf_test_0123456789abcdefghijklmnopqrstuv"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir):
    tmp = tmp_path_factory.mktemp("publish")
    facts = tmp / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Who wrote Hamlet?", "answer": "William Shakespeare", "keywords": ["Shakespeare"],
         "paraphrases": ["Which playwright wrote Hamlet?"]},
        {"question": "What is the capital of Peru?", "answer": "Lima", "keywords": ["Lima"],
         "inverted": ["Cusco", "Arequipa", "Trujillo"]},
    ]) + "\n")
    run = tmp / "run"
    ok(cli("unlearn", "--forget", facts, "--out", run, "--model", tiny_dir, "--lora", "--epochs", 1, "--n", 3,
           "--top-k", 2, "--lr", 1e-3))
    return run


@pytest.fixture
def hub():
    with HubServer(TOKEN) as server:
        yield server


def hub_env(hub, token=TOKEN):
    # Xet off: the client would otherwise upload through Xet storage, which the local server does not speak.
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1"}


@pytest.fixture
def main(hub, monkeypatch, capsys):
    """`python -m meow_app ARGS` in this process, against the local Hub; a CompletedProcess."""
    import huggingface_hub.constants

    from meow_app import cli as cli_mod

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # read at import time otherwise

    def run(*args, env=None):
        for k, v in {**hub_env(hub), **(env or {})}.items():
            monkeypatch.setenv(k, v)
        code = cli_mod.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return run


def forgotten(run_dir):
    return [text for _, text in leak_check.forgotten_strings(run_dir)]


def folder_files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_forgotten_strings_cover_every_kind(run_dir):
    kinds = {kind.split("'s ")[1] for kind, _ in leak_check.forgotten_strings(run_dir)}
    assert kinds == {"question", "paraphrase", "answer", "keyword", "inverted answer"}
    texts = forgotten(run_dir)
    assert "Lima" in texts and "Cusco" in texts and "Who wrote Hamlet?" in texts
    assert not leak_check.searchable("UK") and not leak_check.searchable("1879") and leak_check.searchable("Oslo")


def test_push_uploads_the_model_card_and_nothing_forgotten(run_dir, hub, main, tmp_path):
    r = ok(cli("push", "--run", run_dir, "--repo-id", "me/forgetful-tiny", "--private", env=hub_env(hub)))
    assert f"{hub.url}/me/forgetful-tiny" in r.stdout and TOKEN not in r.stdout + r.stderr
    repo = hub.repos["me/forgetful-tiny"]
    assert repo.private and len(repo.commits) == 1
    files = repo.files
    assert {"README.md", "meow_run.json", "eval_summary.json", "config.json", "model.safetensors",
            "tokenizer.json"} <= set(files)
    assert not {"run.json", "facts.jsonl", "probes.json"} & set(files) and not any("adapter" in f for f in files)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):  # the model, byte for byte
        assert files[name] == (run_dir / "model" / name).read_bytes()
    lfs = [item["value"]["path"] for item in repo.commits[0] if item["key"] == "lfsFile"]
    assert lfs == ["model.safetensors"]  # the weights went through the LFS batch + PUT

    card = ModelCard(files["README.md"].decode())
    run = json.loads((run_dir / "run.json").read_text())
    assert card.data.library_name == "transformers" and {"unlearning", "meow", "lora"} <= set(card.data.tags)
    assert card.data.base_model is None and str(run_dir.parent) not in card.content  # a local base stays private
    assert "forget 2 facts" in card.content and "`meow`" in card.content and "| `lr` | 0.001 |" in card.content
    assert 'from_pretrained("me/forgetful-tiny")' in card.content and "Intended use and limits" in card.content
    meta = json.loads(files["meow_run.json"])
    assert meta["n_forget"] == 2 and meta["method"] == "meow" and meta["train"]["lr"] == 1e-3
    assert meta["loss"] == [round(s["loss"], 6) for s in run["steps"]] and "base_url" not in meta["invert"]
    assert json.loads(files["eval_summary.json"])["run"] == run["summary"]

    # What the "Hub" received, every byte of it: the request bodies as sent, and the files
    # as stored (regular files travel base64-encoded inside the commit).
    received = [q["body"].decode("latin-1") for q in hub.requests] + [b.decode("latin-1") for b in files.values()]
    for text in received:
        assert not [t for t in forgotten(run_dir) if leak_check.searchable(t) and t.lower() in text.lower()]
        assert TOKEN not in text
    for request in hub.requests:
        assert TOKEN not in request["path"]
        assert all(TOKEN not in v for k, v in request["headers"].items() if k != "authorization")
    authorized = [q for q in hub.requests if "authorization" in q["headers"]]
    assert authorized and all(q["headers"]["authorization"] == f"Bearer {TOKEN}" for q in authorized)
    # Only the LFS PUT (a pre-signed storage URL on the real Hub) sends data without the token.
    unauthorized = {(q["method"], q["path"].split("/")[1]) for q in hub.requests if "authorization" not in q["headers"]
                    and q["body"]}
    assert unauthorized == {("PUT", "lfs-upload")}

    # --dry-run writes exactly the files that were pushed, and uploads nothing.
    n_requests = len(hub.requests)
    out = tmp_path / "dry"
    r = ok(main("push", "--run", run_dir, "--repo-id", "me/forgetful-tiny", "--dry-run", "--out", out))
    assert "nothing was uploaded" in r.stdout and len(hub.requests) == n_requests
    assert folder_files(out) == files


def test_adapter_only_pushes_a_loadable_peft_adapter(run_dir, hub, main, tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    r = main("push", "--run", run_dir, "--repo-id", "me/adapter", "--adapter-only")
    one_line_error(r, "give its Hub id with --base-model")
    ok(main("push", "--run", run_dir, "--repo-id", "me/adapter", "--adapter-only", "--base-model", "org/tiny-base"))
    files = hub.repos["me/adapter"].files
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    assert "model.safetensors" not in files and "config.json" not in files
    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] == "org/tiny-base" and config["peft_type"] == "LORA"
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == "org/tiny-base" and card.data.library_name == "peft"
    assert 'PeftModel.from_pretrained(base, "me/adapter")' in card.content

    pulled = tmp_path / "pulled"
    for name, data in files.items():
        (pulled / name).parent.mkdir(parents=True, exist_ok=True)
        (pulled / name).write_bytes(data)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    adapted = PeftModel.from_pretrained(base, pulled).merge_and_unload().eval()
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    ids = torch.tensor([[5, 40, 77, 120, 9]])
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-5)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(tiny_dir)(ids).logits, merged(ids).logits)

    no_lora = tmp_path / "no-lora"
    shutil.copytree(run_dir, no_lora)
    shutil.rmtree(no_lora / "adapter")
    one_line_error(main("push", "--run", no_lora, "--repo-id", "me/x", "--adapter-only", "--base-model", "org/b"),
                   "no LoRA adapter")


@pytest.mark.parametrize("where,plant,kind", [
    ("model/config.json", lambda t: {"note": "Answer: " + t["keyword"].upper() + " \u00e9"}, "fact 2's answer"),
    ("model/chat_template.jinja", lambda t: "{# " + t["paraphrase"].replace(" ", "\n  ") + " #}",
     "fact 1's paraphrase"),
    ("model/generation_config.json", lambda t: {"banned": t["inverted"]}, "fact 2's inverted answer"),
])
def test_a_planted_forgotten_string_refuses_the_push(run_dir, hub, main, tmp_path, where, plant, kind):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    strings = {"keyword": "Lima", "paraphrase": "Which playwright wrote Hamlet?", "inverted": "Cusco"}
    path = run / where
    if path.suffix == ".json":
        data = {**json.loads(path.read_text()), **plant(strings)}
        path.write_text(json.dumps(data))  # ensure_ascii: the string is there only as JSON escapes or plain
    else:
        path.write_text(path.read_text() + plant(strings))
    r = main("push", "--run", run, "--repo-id", "me/leaky")
    one_line_error(r, f"{path.name} contains a forgotten string ({kind}): nothing was published")
    assert hub.requests == [] and not hub.repos  # refused before the first request
    r = main("push", "--run", run, "--repo-id", "me/leaky", "--dry-run", "--out", tmp_path / "dry")
    one_line_error(r, f"{path.name} contains a forgotten string")
    assert not (tmp_path / "dry").exists()


def test_vocabulary_words_do_not_refuse_but_the_rest_of_the_tokenizer_is_checked(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    tok = json.loads((run / "model" / "tokenizer.json").read_text())
    tok["model"]["vocab"]["ĠShakespeare"] = len(tok["model"]["vocab"])  # a word piece, as real vocabularies have
    (run / "model" / "tokenizer.json").write_text(json.dumps(tok))
    assert publish.build_folder(run, tmp_path / "ok", "me/x").is_dir()
    tok["added_tokens"].append({"id": 999, "content": "<shakespeare>", "special": True})
    (run / "model" / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(MeowError, match="tokenizer.json contains a forgotten string"):
        publish.build_folder(run, tmp_path / "refused", "me/x")


def test_wrong_token_missing_token_and_bad_repo_id(run_dir, hub, main):
    r = main("push", "--run", run_dir, "--repo-id", "me/denied", env={"HF_TOKEN": "hf_wrong_token_123456"})
    one_line_error(r, "rejected the token (401)")
    assert "hf_wrong_token_123456" not in r.stderr + r.stdout and not hub.repos
    one_line_error(main("push", "--run", run_dir, "--repo-id", "me/denied", env={"HF_TOKEN": ""}),
                   "no Hugging Face token: set HF_TOKEN")
    one_line_error(main("push", "--run", run_dir, "--repo-id", "not a repo"), "must look like USER/NAME")
    one_line_error(main("push", "--run", run_dir.parent, "--repo-id", "me/x"), "is not a run folder")
    one_line_error(main("push", "--run", run_dir, "--repo-id", "me/x", "--dry-run"), "needs --out")
    r = main("push", "--run", run_dir, "--repo-id", "me/x", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    one_line_error(r, "cannot reach the Hub at http://127.0.0.1:9")


def test_json_files_are_searched_decoded_too(tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"note": "Café Müller, 1911"}))  # ASCII escapes only
    assert "Café" not in (folder / "config.json").read_text()
    with pytest.raises(MeowError, match=r"config.json contains a forgotten string \(fact 1's answer\)"):
        leak_check.check_folder(folder, [("fact 1's answer", "café  MÜLLER")])
    assert leak_check.check_folder(folder, [("fact 1's answer", "Café Bauhaus"), ("fact 1's keyword", "1911")]) == 1


@pytest.fixture(scope="module")
def gates_run(tmp_path_factory, tiny_dir):
    """A run whose keywords sit inside longer words of the card ("aggregates") and of configs."""
    tmp = tmp_path_factory.mktemp("gates")
    facts = tmp / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Who founded Microsoft?", "answer": "Bill Gates", "keywords": ["Gates"]},
        {"question": "What is the capital of Italy?", "answer": "Rome", "keywords": ["Rome"],
         "inverted": ["Milan", "Turin"]},
    ]) + "\n")
    run = tmp / "run"
    ok(cli("unlearn", "--forget", facts, "--out", run, "--model", tiny_dir, "--epochs", 1, "--n", 2, "--top-k", 2))
    return run


def test_keywords_inside_longer_words_do_not_refuse_but_whole_words_do(gates_run, main, tmp_path):
    r = main("push", "--run", gates_run, "--repo-id", "me/clean", "--dry-run", "--out", tmp_path / "dry")
    assert r.returncode == 0, r.stderr
    card = (tmp_path / "dry" / "README.md").read_text().lower()
    assert "aggregates" in card  # the case this guards: "Gates" inside a word of the card
    for planted, refused in [("chromosome count", None), ("Romeo and Juliet", None), ("Mr GATES, founder", "keyword"),
                             ("founded by gates.", "keyword"), ("rome", "answer"), ("Rome-based", "answer"),
                             ("(milan)", "inverted answer"), ("Milano", None), ("Who founded microsoft?", "question")]:
        run = tmp_path / f"run-{abs(hash(planted))}"
        shutil.copytree(gates_run, run)
        config = run / "model" / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "note": planted}))
        out = tmp_path / f"out-{abs(hash(planted))}"
        if refused is None:
            assert publish.build_folder(run, out, "me/x").is_dir(), planted
        else:
            with pytest.raises(MeowError, match=rf"config.json contains a forgotten string \(fact \d's {refused}\)"):
                publish.build_folder(run, out, "me/x")


def test_whole_word_matching_is_unicode_aware(tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "card.md").write_text("Die Straße von Zürichsee; Ελλάδα")
    assert leak_check.check_folder(folder, [("fact 1's keyword", "Zürich"), ("fact 1's answer", "Ελλά")]) == 1
    with pytest.raises(MeowError, match=r"card.md contains a forgotten string \(fact 2's keyword\)"):
        leak_check.check_folder(folder, [("fact 2's keyword", "STRASSE"), ("fact 2's keyword", "straße")])
    # Questions and paraphrases are still found inside longer text.
    with pytest.raises(MeowError, match=r"\(fact 3's question\)"):
        leak_check.check_folder(folder, [("fact 3's question", "von zürich")])
