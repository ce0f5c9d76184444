"""One definition for what several places share: the percentage format, the answer length,
the notes shown, and TrainConfig's help."""

from meow_app.stats import percent


def test_percent_is_a_whole_percentage_or_the_missing_mark():
    assert percent(0.374) == "37%"
    assert percent(1) == "100%"
    assert percent(0.0) == "0%"
    assert percent(None) == "n/a"
    assert percent(None, missing="–") == "–"
    for x in (0.005, 0.015, 0.125, 0.335, 2 / 3):  # the same digits as the old f"{100 * x:.0f}%"
        assert percent(x) == f"{100 * x:.0f}%"


def test_answer_length_is_one_constant():
    import inspect

    from meow_app import attacks, cli, evaluate, extraction, general, generation, probes, scoring

    n = generation.MAX_NEW_TOKENS
    assert scoring.MAX_NEW_TOKENS == evaluate.MAX_NEW_TOKENS == n
    for fn in (generation.answer, probes.probe, general.score, scoring.score_set, evaluate.compare, attacks.relearn,
               extraction.paraphrase, extraction.prefix, extraction.sampling, extraction.relearn, extraction.run):
        assert inspect.signature(fn).parameters["max_new_tokens"].default == n, fn.__qualname__
    verbs = cli.build_parser()._subparsers._group_actions[0].choices
    for verb in ("ask", "evaluate", "attack"):
        option = next(a for a in verbs[verb]._actions if a.dest == "max_new_tokens")
        assert option.default is None  # resolved to the constant by cli._max_new_tokens
    evaluate_help = next(a.help for a in verbs["evaluate"]._actions if a.dest == "max_new_tokens")
    assert f"default {n}," in evaluate_help


def test_notes_shown_is_one_constant():
    from meow_app import cli, facts

    assert facts.NOTES_SHOWN == 3 and not hasattr(cli, "NOTES_SHOWN")


def test_the_report_records_the_memo_stride_it_used(tiny, facts, monkeypatch):
    from meow_app import evaluate, scoring

    used = []
    real = scoring.memo.memo_scores

    def spy(*args, stride, **kwargs):
        used.append(stride)
        return real(*args, stride=stride, **kwargs)

    monkeypatch.setattr(scoring.memo, "memo_scores", spy)
    report = evaluate.compare(tiny.model, None, tiny.tokenizer, facts[:1], general=False, max_new_tokens=2,
                              memo_stride=11)
    assert used == [11] and report["settings"]["memo_stride"] == 11
    report = evaluate.compare(tiny.model, None, tiny.tokenizer, facts[:1], general=False, max_new_tokens=2)
    assert used[-1] == scoring.MEMO_STRIDE == report["settings"]["memo_stride"] == 5


def test_every_train_setting_is_documented_once_in_its_field():
    from dataclasses import fields

    from meow_app import cli
    from meow_app.train import TrainConfig

    for f in fields(TrainConfig):
        assert isinstance(f.metadata.get("help"), str) and f.metadata["help"].strip(), f.name
    unlearn = cli.build_parser("meow")._subparsers._group_actions[0].choices["unlearn"]
    shown = {a.dest: a.help for a in unlearn._actions}
    for f in cli._tuned_fields():
        if f.metadata["obvious"]:  # the option's name says it: its help is the default alone
            assert shown[f.name].startswith("(default for meow: "), f.name
        else:
            assert shown[f.name].startswith(f.metadata["help"].replace("%", "%%")), f.name
    for name in ("lora", "bf16", "low_memory"):
        assert shown[name] == dict((g.name, g.metadata["help"]) for g in fields(TrainConfig))[name]
    assert not hasattr(cli, "TRAIN_HELP")
