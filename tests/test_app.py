"""The web app's callbacks as plain functions, with the tiny model: seconds, no browser."""

import json

import gradio as gr
import pandas as pd
import pytest
import torch

import app
from meow_app import methods


@pytest.fixture
def sess(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEOW_MODEL", tiny_dir)
    return app.new_session()


def skipped(output) -> bool:
    """The callback left this component as it was: gr.skip(), a plain {"__type__": "update"}
    (a new one each call, so compared with ==, never with `is`)."""
    return isinstance(output, dict) and output == gr.skip()


def _loaded(s, n=2):
    s, table, msg, inv, sel = app.load_bundled(s, "Demo: 8 famous facts", n)
    assert msg.startswith("✅") and len(table) == n and inv.empty and sel.empty
    return s, table


def test_app_builds_with_every_registered_method():
    demo = app.build()
    assert isinstance(demo, gr.Blocks)
    dropdown = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Method")
    assert sorted(c[0] for c in dropdown.choices) == methods.names()
    api = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"load_bundled", "upload_facts", "invert", "score", "unlearn", "cancel", "chat",
            "probe_forgotten", "probe_unrelated", "download_run", "publish_preview", "publish_push"} <= api


def test_every_bundled_set_loads_and_describes_itself(sess):
    for label, (name, about) in app.BUNDLED.items():
        assert (app.FACTS_DIR / name).is_file() and about
        s, table, msg, _, _ = app.load_bundled(sess, label, 0)
        assert len(s["facts"]) == len(table) > 0
    assert "does not know" in app.bundled_info("TOFU forget01 (40)")


def test_upload_errors_are_inline_and_keep_the_table(sess, tmp_path):
    s, _ = _loaded(sess)
    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"question": "Q1", "answer": "A1"}\n{"question": "Q2"}\n')
    s2, table, msg, inv, sel = app.upload_facts(s, str(bad))
    assert msg.startswith("⚠️") and "mine.jsonl" in msg and "line 2" in msg and "answer" in msg
    assert skipped(table) and skipped(inv) and skipped(sel)  # the tables are left as they were
    assert len(s2["facts"]) == 2
    good = tmp_path / "mine.csv"
    good.write_text("question,answer,keywords\nWho wrote Hamlet?,Shakespeare,Shakespeare\nCapital of Peru?,Lima,\n")
    s3, table, msg, _, _ = app.upload_facts(s, str(good))
    assert msg.startswith("✅") and "2 facts" in msg and list(table["question"]) == ["Who wrote Hamlet?", "Capital of Peru?"]


def test_upload_is_never_truncated(sess, tmp_path, monkeypatch):
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}"}) + "\n" for i in range(5)))
    s, table, msg, _, _ = app.upload_facts(sess, str(big))
    assert len(table) == 5 and "5 facts" in msg
    real = app.facts_mod.load_facts
    monkeypatch.setattr(app.facts_mod, "load_facts", lambda path: real(path, max_facts=3))
    s, table, msg, _, _ = app.upload_facts(s, str(big))
    assert msg.startswith("⚠️") and "more than 3 facts" in msg and len(s["facts"]) == 5  # refused, not cut


def test_edited_table_is_validated_by_row(sess):
    s, table = _loaded(sess)
    table.loc[len(table)] = ["", "", "", ""]  # an empty row the user added is ignored
    s, msg = app.use_table(s, table)
    assert msg.startswith("✅") and len(s["facts"]) == 2
    table.loc[len(table)] = ["Who painted it?", "", "", ""]
    s, msg = app.use_table(s, table)
    assert msg.startswith("⚠️") and "table row 4" in msg and "answer" in msg and len(s["facts"]) == 2
    s, msg = app.use_table(s, {"headers": app.FACT_COLUMNS, "data": [["Q?", "A", "A", "Q again?; Q once more?"]]})
    assert s["facts"][0].paraphrases == ["Q again?", "Q once more?"] and s["facts"][0].keywords == ["A"]


def test_bad_model_is_inline_and_keeps_the_old_one(sess, tiny_dir):
    s, msg = app.load_model(sess, "/no/such/model")
    assert msg.startswith("⚠️") and "does not exist" in msg and s["model"] == tiny_dir
    s, msg = app.load_model(s, tiny_dir)
    assert msg.startswith("✅ Loaded:") and "parameters" in msg and "cpu" in msg


def test_invert_score_override_and_plot(sess):
    s, _ = _loaded(sess)
    s, inv, msg = app.run_invert(s, "Local model", 3, "", "", "")
    assert msg.startswith("✅") and list(inv.columns) == app.INVERT_COLUMNS
    assert sorted(set(inv["fact"])) == [1, 2] and (inv.groupby("fact").size() == 3).all()
    inv.loc[0, "inverted answer"] = "My own false answer"  # the user's edit is what gets scored
    s, sel, bars, msg = app.run_score(s, inv, 2, "largest")
    assert msg.startswith("✅") and "My own false answer" in list(sel["inverted answer"])
    assert (sel.groupby("fact")["use"].sum() == 2).all() and sel["MEMO"].between(0, 1).all()
    assert set(bars["kind"]) == {"true answer", "selected", "not selected"}
    sel["use"] = [True] + [False] * (len(sel) - 1)  # override: one answer for fact 1, none for fact 2
    with pytest.raises(app.MeowError, match="fact 2 has no ticked"):
        app.selected_facts(s, sel)
    sel.loc[sel["fact"] == 2, "use"] = True
    chosen = app.selected_facts(s, sel)
    assert chosen[0].inverted == ["My own false answer"] and len(chosen[1].inverted) == 3


def test_invert_api_errors_are_inline(sess, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    s, _ = _loaded(sess)
    s, inv, msg = app.run_invert(s, "OpenAI-compatible API", 2, "", "", "")
    assert skipped(inv)  # the candidates table is left as it was
    assert msg.startswith("⚠️") and "model name" in msg
    s, inv, msg = app.run_invert(s, "OpenAI-compatible API", 2, "", "gpt-x", "")
    assert "no API key" in msg
    s, _, msg = app.run_invert(app.new_session(), "Local model", 2, "", "", "")
    assert msg.startswith("⚠️") and "no facts" in msg


def test_method_info_lists_hyperparameters_and_parses_edits():
    for name in methods.names():
        text, table = app.method_info(name)
        shown = list(table["setting"])
        assert name in text and len(table) >= 2
        assert set(methods.REGISTRY[name].hyperparameters) <= set(shown), (name, shown)
    text, table = app.method_info("meow")
    assert "num_batch" in list(table["setting"])
    table.loc[table["setting"] == "epochs", "value"] = "2"
    config = app.train_config("meow", table, True)
    assert config.epochs == 2 and config.lora is True
    table.loc[table["setting"] == "lr", "value"] = "fast"
    with pytest.raises(app.MeowError, match="'lr' must be a float"):
        app.train_config("meow", table, False)


def _unlearn(s, hp=(("epochs", "1"), ("num_batch", "2"), ("lr", "1e-4")), **kw):
    args = dict(method="meow", hp_table=pd.DataFrame(list(hp), columns=["setting", "value"]), lora=False,
                generator="Local model", n=2, base_url="", api_model="", api_key="", top_k=1, strategy="largest",
                inv_table=app._empty(app.INVERT_COLUMNS), sel_table=app._empty(app.SELECT_COLUMNS))
    args.update(kw)
    return list(app.run_unlearn(s, *args.values()))


def test_unlearn_streams_progress_saves_a_run_and_compares(sess, tmp_path):
    s, _ = _loaded(sess)
    outs = _unlearn(s)
    final = outs[-1]
    assert final[1].startswith("✅ Done") and len(outs) > 2
    assert not final[2].empty and list(final[2].columns) == ["step", "loss"]
    assert "before" in final[3] and "after" in final[3]
    assert set(final[4]["verdict"]) <= {"forgotten", "still known", "leaks under paraphrase", "not known before"}
    run_dir = s["run_dir"]
    assert run_dir.startswith(str(tmp_path / "home" / "runs" / s["id"]))
    assert (app.Path(run_dir) / "model" / "config.json").is_file()
    # The unlearned model shown in Compare is the trained one, beside the unchanged original.
    new, original = s["unlearned"].model.state_dict(), app._original(s).model.state_dict()
    assert sorted(new) == sorted(original) and any(not torch.equal(new[k], original[k]) for k in new)
    # Compare: the same prompt goes to both models, streamed, multi-turn.
    chunks = list(app.send_chat(s, "Who wrote Hamlet?"))
    s, left, right, box = chunks[-1]
    assert box == "" and left[0]["content"] == right[0]["content"] == "Who wrote Hamlet?"
    assert left[1]["role"] == right[1]["role"] == "assistant" and len(chunks) > 2
    s, left, right, box = list(app.send_chat(s, "And Macbeth?"))[-1]
    assert len(left) == len(right) == 4
    s, left, right, table, msg = app.run_probe(s, "question")
    assert msg.startswith("✅") and len(table) == 2 and len(left) == 8
    s, left, right, table, msg = app.run_probe(s, "unrelated")
    assert len(table) == app.UNRELATED_DEFAULT and set(table["kind"]) == {"unrelated"}
    s, left, right, table, msg = app.run_probe(s, "paraphrase")
    assert set(table["kind"]) == {"paraphrase"}
    assert app.clear_chat(s)[1:] == ([], [])
    zipped, msg = app.download_run(s)
    assert zipped.endswith(".zip") and "run.json" in msg
    import zipfile
    assert any(n.endswith("/run.json") for n in zipfile.ZipFile(zipped).namelist())


def test_unlearn_errors_are_inline(sess):
    outs = _unlearn(app.new_session())
    assert outs[-1][1].startswith("⚠️") and "no facts" in outs[-1][1]
    s, _ = _loaded(sess)
    outs = _unlearn(s, hp=(("epochs", "zero"),))
    assert "'epochs' must be a int" in outs[-1][1]
    assert s["run_dir"] is None and app.download_run(s)[0] is None


def test_cancel_stops_a_running_job(sess, monkeypatch):
    s, _ = _loaded(sess)
    assert "Nothing is running" in app.cancel(s)
    real = app.pipeline.unlearn

    def unlearn_then_cancel(*a, on_event, should_stop, **kw):
        def spy(event):  # the user presses Cancel as soon as training starts
            if event.get("stage") == "train":
                app.cancel(s)
            on_event(event)
        return real(*a, on_event=spy, should_stop=should_stop, **kw)

    monkeypatch.setattr(app.pipeline, "unlearn", unlearn_then_cancel)
    outs = _unlearn(s, hp=(("epochs", "3"), ("num_batch", "2")))
    assert "Cancelled" in outs[-1][1] and s["run_dir"] is None and s["id"] not in app._STOP


def test_chat_before_unlearning_uses_only_the_original(sess):
    s, left, right, _ = list(app.send_chat(sess, "Hello"))[-1]
    assert left[1]["content"] != app.NO_UNLEARNED and right[1]["content"] == app.NO_UNLEARNED
    s, *_, msg = app.run_probe(s, "question")
    assert msg.startswith("⚠️")  # no facts loaded yet


# Every (kind, leaked before, leaked after) case. A fact the model did not give before
# but gives after unlearning is reported as what it shows now (still known / leaks / kept).
VERDICTS = {
    ("question", True, False): "forgotten", ("question", True, True): "still known",
    ("question", False, False): "not known before", ("question", False, True): "still known",
    ("paraphrase", True, False): "forgotten", ("paraphrase", True, True): "leaks under paraphrase",
    ("paraphrase", False, False): "not known before", ("paraphrase", False, True): "leaks under paraphrase",
    ("unrelated", True, False): "lost", ("unrelated", True, True): "kept",
    ("unrelated", False, False): "not known before", ("unrelated", False, True): "kept",
}


def test_verdicts():
    assert len(VERDICTS) == 12
    assert {case: app.verdict(*case) for case in VERDICTS} == VERDICTS


def test_sessions_are_separate(sess):
    a, b = app.session(None), app.session(None)
    a, _ = _loaded(a, 2)
    assert a["id"] != b["id"] and b["facts"] == [] and b["chat"] == []
    assert app.new_run_dir(a, "meow").parent != app.new_run_dir(b, "meow").parent


def test_publish_previews_then_pushes_to_the_hub(sess, monkeypatch):
    import huggingface_hub.constants

    from hub_server import HubServer

    files, card, msg = app.publish_preview(sess, "me/cat", False, "")
    assert msg.startswith("⚠️") and "unlearn first" in msg and files.empty
    s, _ = _loaded(sess)
    _unlearn(s, lora=True)
    files, card, msg = app.publish_preview(s, "bad id", False, "")
    assert msg.startswith("⚠️") and "USER/NAME" in msg
    files, card, msg = app.publish_preview(s, "me/cat", True, "org/tiny")
    assert msg.startswith("✅") and {"adapter_model.safetensors", "README.md", "meow_run.json"} <= set(files["file"])
    assert "forget 2 facts" in card and not card.startswith("---")
    assert not any(f.question.lower() in card.lower() for f in s["facts"])
    with HubServer("hf_app_token_abcdef") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        assert "no Hugging Face token" in app.publish_push(s, "me/cat", True, False, "", "")
        assert "rejected the token (401)" in app.publish_push(s, "me/cat", True, False, "", "hf_wrong")
        msg = app.publish_push(s, "me/cat", True, False, "", "", gr.OAuthToken(token="hf_app_token_abcdef",
                                                                                scope="", expires_at=0))
        assert msg.startswith("✅") and f"{hub.url}/me/cat" in msg and "hf_app_token" not in msg
        assert hub.repos["me/cat"].private and "model.safetensors" in hub.repos["me/cat"].files
        monkeypatch.setenv("HF_TOKEN", "hf_app_token_abcdef")  # the fallback when nothing is typed
        assert app.publish_push(s, "me/cat", False, False, "", "").startswith("✅")
        assert len(hub.repos["me/cat"].commits) == 2
