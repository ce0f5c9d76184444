"""The web app's callbacks as plain functions, with the tiny model: seconds, no browser."""

import json
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
import torch

import app
from meow_app import methods
from meow_app.errors import MeowError
from studio import compare_tab, facts_tab, invert_tab, memo_tab, model_tab, publish_tab, session, unlearn_tab


@pytest.fixture
def sess(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEOW_MODEL", tiny_dir)
    return session.new_session()


def skipped(output) -> bool:
    """The callback left this component as it was: gr.skip(), a plain {"__type__": "update"}
    (a new one each call, so compared with ==, never with `is`)."""
    return isinstance(output, dict) and output == gr.skip()


def _loaded(s, n=2):
    s, table, msg, inv, sel = facts_tab.load_bundled(s, "Demo: 8 famous facts", n)
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
    for label, (name, about) in facts_tab.BUNDLED.items():
        assert (facts_tab.FACTS_DIR / name).is_file() and about
        s, table, msg, _, _ = facts_tab.load_bundled(sess, label, 0)
        assert len(s["facts"]) == len(table) > 0
    assert "does not know" in facts_tab.bundled_info("TOFU forget01 (40)")


def test_upload_errors_are_inline_and_keep_the_table(sess, tmp_path):
    s, _ = _loaded(sess)
    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"question": "Q1", "answer": "A1"}\n{"question": "Q2"}\n')
    s2, table, msg, inv, sel = facts_tab.upload_facts(s, str(bad))
    assert msg.startswith("⚠️") and "mine.jsonl" in msg and "line 2" in msg and "answer" in msg
    assert skipped(table) and skipped(inv) and skipped(sel)  # the tables are left as they were
    assert len(s2["facts"]) == 2
    good = tmp_path / "mine.csv"
    good.write_text("question,answer,keywords\nWho wrote Hamlet?,Shakespeare,Shakespeare\nCapital of Peru?,Lima,\n")
    s3, table, msg, _, _ = facts_tab.upload_facts(s, str(good))
    assert (msg.startswith("✅") and "2 facts" in msg
            and list(table["question"]) == ["Who wrote Hamlet?", "Capital of Peru?"])


def test_upload_is_never_truncated(sess, tmp_path, monkeypatch):
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}"}) + "\n" for i in range(5)))
    s, table, msg, _, _ = facts_tab.upload_facts(sess, str(big))
    assert len(table) == 5 and "5 facts" in msg
    real = facts_tab.facts_mod.load_facts
    monkeypatch.setattr(facts_tab.facts_mod, "load_facts", lambda path: real(path, max_facts=3))
    s, table, msg, _, _ = facts_tab.upload_facts(s, str(big))
    assert msg.startswith("⚠️") and "more than 3 facts" in msg and len(s["facts"]) == 5  # refused, not cut


def test_edited_table_is_validated_by_row(sess):
    s, table = _loaded(sess)
    table.loc[len(table)] = ["", "", "", ""]  # an empty row the user added is ignored
    s, msg = facts_tab.use_table(s, table)
    assert msg.startswith("✅") and len(s["facts"]) == 2
    table.loc[len(table)] = ["Who painted it?", "", "", ""]
    s, msg = facts_tab.use_table(s, table)
    assert msg.startswith("⚠️") and "table row 4" in msg and "answer" in msg and len(s["facts"]) == 2
    s, msg = facts_tab.use_table(s, {"headers": facts_tab.FACT_COLUMNS,
                                     "data": [["Q?", "A", "A", "Q again?; Q once more?"]]})
    assert s["facts"][0].paraphrases == ["Q again?", "Q once more?"] and s["facts"][0].keywords == ["A"]


def test_invert_with_the_lead_in_generator(sess):
    s, _ = _loaded(sess)
    assert invert_tab.invert_settings("Local model, continuing its own answer", 3, "", "", "").generator == "lead_in"
    s, inv, msg = invert_tab.run_invert(s, "Local model, continuing its own answer", 3, "", "", "")
    assert msg.startswith("✅") and (inv.groupby("fact").size() == 3).all()


def test_every_generator_the_library_knows_is_an_invert_choice():
    from meow_app import pipeline

    assert sorted(invert_tab.GENERATOR_CHOICES.values()) == sorted(pipeline.GENERATORS)
    assert invert_tab.GENERATOR_CHOICES[invert_tab.DEFAULT_GENERATOR] == pipeline.InvertSettings().generator


def test_invert_own_answer_first_then_similar_subjects(sess):
    s, _ = _loaded(sess)
    s, inv, msg = invert_tab.run_invert(s, "Local model, its own answer first, then similar subjects", 2, "", "", "")
    assert msg.startswith("✅") and (inv.groupby("fact").size() == 2).all()


def test_bad_model_is_inline_and_keeps_the_old_one(sess, tiny_dir):
    s, msg = model_tab.load_model(sess, "/no/such/model")
    assert msg.startswith("⚠️") and "does not exist" in msg and s["model"] == tiny_dir
    s, msg = model_tab.load_model(s, tiny_dir)
    assert msg.startswith("✅ Loaded:") and "parameters" in msg and "cpu" in msg


def test_invert_score_override_and_plot(sess):
    s, _ = _loaded(sess)
    s, inv, msg = invert_tab.run_invert(s, "Local model", 3, "", "", "")
    assert msg.startswith("✅") and list(inv.columns) == invert_tab.INVERT_COLUMNS
    assert sorted(set(inv["fact"])) == [1, 2] and (inv.groupby("fact").size() == 3).all()
    inv.loc[0, "inverted answer"] = "My own false answer"  # the user's edit is what gets scored
    s, sel, bars, msg = memo_tab.run_score(s, inv, 2, "largest")
    assert msg.startswith("✅") and "My own false answer" in list(sel["inverted answer"])
    assert (sel.groupby("fact")["use"].sum() == 2).all() and sel["MEMO"].between(0, 1).all()
    assert set(bars["kind"]) == {"true answer", "selected", "not selected"}
    sel["use"] = [True] + [False] * (len(sel) - 1)  # override: one answer for fact 1, none for fact 2
    with pytest.raises(MeowError, match="fact 2 has no ticked"):
        memo_tab.selected_facts(s, sel)
    sel.loc[sel["fact"] == 2, "use"] = True
    chosen = memo_tab.selected_facts(s, sel)
    assert chosen[0].inverted == ["My own false answer"] and len(chosen[1].inverted) == 3


def test_invert_api_errors_are_inline(sess, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    s, _ = _loaded(sess)
    s, inv, msg = invert_tab.run_invert(s, "OpenAI-compatible API", 2, "", "", "")
    assert skipped(inv)  # the candidates table is left as it was
    assert msg.startswith("⚠️") and "model name" in msg
    s, inv, msg = invert_tab.run_invert(s, "OpenAI-compatible API", 2, "", "gpt-x", "")
    assert "no API key" in msg
    s, _, msg = invert_tab.run_invert(session.new_session(), "Local model", 2, "", "", "")
    assert msg.startswith("⚠️") and "no facts" in msg


def test_method_info_lists_hyperparameters_and_parses_edits():
    for name in methods.names():
        text, table = unlearn_tab.method_info(name)
        shown = list(table["setting"])
        assert name in text and len(table) >= 2
        assert set(methods.REGISTRY[name].hyperparameters) <= set(shown), (name, shown)
    text, table = unlearn_tab.method_info("meow")
    assert "num_batch" in list(table["setting"])
    table.loc[table["setting"] == "epochs", "value"] = "2"
    config = unlearn_tab.train_config("meow", table, True)
    assert config.epochs == 2 and config.lora is True
    table.loc[table["setting"] == "lr", "value"] = "fast"
    with pytest.raises(MeowError, match="'lr' must be a float"):
        unlearn_tab.train_config("meow", table, False)


def _unlearn(s, hp=(("epochs", "1"), ("num_batch", "2"), ("lr", "1e-4")), **kw):
    args = dict(method="meow", hp_table=pd.DataFrame(list(hp), columns=["setting", "value"]), lora=False,
                generator="Local model", n=2, base_url="", api_model="", api_key="", top_k=1, strategy="largest",
                inv_table=session._empty(invert_tab.INVERT_COLUMNS), sel_table=session._empty(memo_tab.SELECT_COLUMNS))
    args.update(kw)
    return list(unlearn_tab.run_unlearn(s, *args.values()))


def test_unlearn_streams_progress_saves_a_run_and_compares(sess, tmp_path):
    s, _ = _loaded(sess)
    outs = _unlearn(s, hp=(("epochs", "1"), ("num_batch", "2"), ("lr", "1e-4"), ("batch_size", "1")))  # 4 steps
    final = outs[-1]
    assert final[1].startswith("✅ Done") and len(outs) > 2
    assert s["id"] not in final[1] and "/" not in final[1]  # the run's name, no server path
    (line,) = final[2].axes[0].get_lines()
    assert list(line.get_xdata()) == [e["step"] for e in s["run"]["steps"]]
    assert all(float(t).is_integer() for t in final[2].axes[0].get_xticks())  # no step 1.5
    statuses = [o[1] for o in outs if "Training: step" in o[1]]
    assert statuses and "step 1 of at most" in statuses[0] and "left" in statuses[1], statuses[:2]
    assert "before" in final[3] and "after" in final[3]
    # Other knowledge, without a keep set: the everyday questions, before and after.
    every = s["run"]["summary"]["everyday"]
    assert f"| {every['known_before']} of {every['asked']} | {every['known_after']} of {every['asked']} |" in final[3]
    assert "Other knowledge" in final[3]
    assert set(final[4]["verdict"]) <= {"forgotten", "still known", "leaks under paraphrase", "not known before"}
    run_dir = s["run_dir"]
    assert run_dir.startswith(str(tmp_path / "home" / "runs" / s["id"]))
    assert (Path(run_dir) / "model" / "config.json").is_file()
    # The unlearned model shown in Compare is the trained one, beside the unchanged original.
    new, original = s["unlearned"].model.state_dict(), session._original(s).model.state_dict()
    assert sorted(new) == sorted(original) and any(not torch.equal(new[k], original[k]) for k in new)
    # Compare: the same prompt goes to both models, streamed, multi-turn.
    chunks = list(compare_tab.send_chat(s, "Who wrote Hamlet?"))
    s, left, right, box = chunks[-1]
    assert box == "" and left[0]["content"] == right[0]["content"] == "Who wrote Hamlet?"
    assert left[1]["role"] == right[1]["role"] == "assistant" and len(chunks) > 2
    s, left, right, box = list(compare_tab.send_chat(s, "And Macbeth?"))[-1]
    assert len(left) == len(right) == 4
    s, left, right, table, msg = compare_tab.run_probe(s, "question")
    assert msg.startswith("✅") and len(table) == 2 and len(left) == 8
    s, left, right, table, msg = compare_tab.run_probe(s, "unrelated")
    assert len(table) == compare_tab.UNRELATED_DEFAULT and set(table["kind"]) == {"unrelated"}
    s, left, right, table, msg = compare_tab.run_probe(s, "paraphrase")
    assert set(table["kind"]) == {"paraphrase"}
    assert compare_tab.clear_chat(s)[1:] == ([], [])
    zipped, msg = publish_tab.download_run(s)
    assert zipped.endswith(".zip") and "run.json" in msg
    import zipfile
    assert any(n.endswith("/run.json") for n in zipfile.ZipFile(zipped).namelist())


def test_old_zips_are_removed_and_gradio_is_told_to_clear_its_copies(sess, tmp_path, monkeypatch):
    """A run's zip holds the model: the one made before is removed by the next download once
    gradio has long copied it (ZIP_AGE), and gradio deletes its own copies (delete_cache)."""
    from studio import layout

    monkeypatch.setattr(publish_tab, "ZIPS", tmp_path / "zips")
    run = tmp_path / "runs" / "run-1"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    sess["run_dir"] = str(run)
    first, _ = publish_tab.download_run(sess)
    second, _ = publish_tab.download_run(sess)
    assert Path(first).is_file() and Path(second).is_file()  # (both younger than ZIP_AGE)
    monkeypatch.setattr(publish_tab, "ZIP_AGE", -1)
    third, msg = publish_tab.download_run(sess)
    assert msg.startswith("✅") and Path(third).is_file() and not Path(first).exists() and not Path(second).exists()
    assert [p.name for p in (tmp_path / "zips").iterdir()] == [Path(third).parent.name]
    assert layout.build().delete_cache == layout.DELETE_CACHE


def test_unlearn_errors_are_inline(sess):
    outs = _unlearn(session.new_session())
    assert outs[-1][1].startswith("⚠️") and "no facts" in outs[-1][1]
    s, _ = _loaded(sess)
    outs = _unlearn(s, hp=(("epochs", "zero"),))
    assert "'epochs' must be a int" in outs[-1][1]
    assert s["run_dir"] is None and publish_tab.download_run(s)[0] is None


def test_cancel_stops_a_running_job(sess, monkeypatch):
    s, _ = _loaded(sess)
    assert "Nothing is running" in unlearn_tab.cancel(s)
    real = unlearn_tab.pipeline.unlearn

    def unlearn_then_cancel(*a, on_event, should_stop, **kw):
        def spy(event):  # the user presses Cancel as soon as training starts
            if event.get("stage") == "train":
                unlearn_tab.cancel(s)
            on_event(event)
        return real(*a, on_event=spy, should_stop=should_stop, **kw)

    monkeypatch.setattr(unlearn_tab.pipeline, "unlearn", unlearn_then_cancel)
    outs = _unlearn(s, hp=(("epochs", "3"), ("num_batch", "2")))
    assert "Cancelled" in outs[-1][1] and s["run_dir"] is None and s["id"] not in unlearn_tab._STOP


def test_chat_before_unlearning_uses_only_the_original(sess):
    s, left, right, _ = list(compare_tab.send_chat(sess, "Hello"))[-1]
    assert left[1]["content"] != compare_tab.NO_UNLEARNED and right[1]["content"] == compare_tab.NO_UNLEARNED
    s, *_, msg = compare_tab.run_probe(s, "question")
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


def test_an_answer_the_probe_cut_is_shown_as_cut():
    before = [{"kind": "question", "question": "Q?", "answer": "Lima is the capital.", "leak": True, "cut": True}]
    after = [{"kind": "question", "question": "Q?", "answer": "Cusco.", "leak": False}]
    row = compare_tab.verdict_table(before, after).iloc[0]
    assert row["original model"] == "Lima is the capital. …" and row["unlearned model"] == "Cusco."


def test_verdicts():
    assert len(VERDICTS) == 12
    assert {case: compare_tab.verdict(*case) for case in VERDICTS} == VERDICTS


def test_sessions_are_separate(sess):
    a, b = session.session(None), session.session(None)
    a, _ = _loaded(a, 2)
    assert a["id"] != b["id"] and b["facts"] == [] and b["chat"] == []
    assert unlearn_tab.new_run_dir(a, "meow").parent != unlearn_tab.new_run_dir(b, "meow").parent


def test_publish_previews_then_pushes_to_the_hub(sess, monkeypatch):
    import huggingface_hub.constants

    from hub_server import HubServer

    files, card, msg = publish_tab.publish_preview(sess, "me/cat", False, "")
    assert msg.startswith("⚠️") and "unlearn first" in msg and files.empty
    s, _ = _loaded(sess)
    _unlearn(s, lora=True)
    files, card, msg = publish_tab.publish_preview(s, "bad id", False, "")
    assert msg.startswith("⚠️") and "USER/NAME" in msg
    files, card, msg = publish_tab.publish_preview(s, "me/cat", True, "org/tiny")
    assert msg.startswith("✅") and {"adapter_model.safetensors", "README.md", "meow_run.json"} <= set(files["file"])
    assert "forget 2 facts" in card and not card.startswith("---")
    assert not any(f.question.lower() in card.lower() for f in s["facts"])
    with HubServer("hf_app_token_abcdef") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        assert "into the token field" in publish_tab.publish_push(s, "me/cat", True, False, "", "")
        assert "rejected the token (401)" in publish_tab.publish_push(s, "me/cat", True, False, "", "hf_wrong")
        msg = publish_tab.publish_push(s, "me/cat", True, False, "", "", gr.OAuthToken(token="hf_app_token_abcdef",
                                                                                scope="", expires_at=0))
        assert msg.startswith("✅") and f"{hub.url}/me/cat" in msg and "hf_app_token" not in msg
        assert hub.repos["me/cat"].private and "model.safetensors" in hub.repos["me/cat"].files
        monkeypatch.setenv("HF_TOKEN", "hf_app_token_abcdef")  # the fallback when nothing is typed
        assert publish_tab.publish_push(s, "me/cat", False, False, "", "").startswith("✅")
        assert len(hub.repos["me/cat"].commits) == 2


def test_the_settings_table_shows_what_the_method_runs_with():
    from meow_app.train import TrainConfig

    for name, cls in methods.REGISTRY.items():
        text, table = unlearn_tab.method_info(name)
        runs = TrainConfig(**cls.defaults)
        assert unlearn_tab.train_config(name, table, False) == runs, name  # the table as shown changes nothing
        for key, value in table.values.tolist():
            assert value == str(getattr(runs, key)), (name, key, value)
    text, table = unlearn_tab.method_info("meow")
    assert dict(table.values.tolist())["lr"] == "0.0005"  # meow's own default, not TrainConfig's 5e-05


def test_loss_figure_has_integer_steps_even_for_a_few():
    fig = unlearn_tab.loss_figure([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.4}])
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert not unlearn_tab.loss_figure([]).axes[0].get_lines()
