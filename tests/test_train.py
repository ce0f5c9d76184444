import hashlib
import re

import pytest
import torch

from meow_app import methods
from meow_app.errors import Cancelled, MeowError
from meow_app.facts import Fact
from meow_app.train import TrainConfig, Trainer


def weights_hash(model):
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def inverted_facts():
    return [Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"],
                 inverted=["Charles Dickens", "Mark Twain"]),
            Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Quito"])]


def run(tiny, facts, retain=None, method="meow", **cfg):
    config = TrainConfig(**{"epochs": 3, "lr": 1e-3, "batch_size": 4, "num_batch": 4, "early_stop": False, **cfg})
    events = []
    result = Trainer(methods.get(method), tiny.model, tiny.tokenizer, config, facts, retain, events.append).train()
    return result, events


@pytest.mark.parametrize("method", ["meow", "meow_grad_diff", "meow_kl", "meow_ul"])
def test_loss_goes_down_and_original_is_untouched(tiny, inverted_facts, facts, method):
    before = weights_hash(tiny.model)
    result, events = run(tiny, inverted_facts, retain=facts, method=method, lr=3e-3, epochs=4,
                         train_embeddings=True, train_only="")  # the random tiny model learns little without them
    losses = [e["forget_nll"] for e in events if e["type"] == "step"]
    assert losses[-1] < losses[0] * 0.8
    assert weights_hash(tiny.model) == before
    assert weights_hash(result.model) != before
    assert any(e["type"] == "probe" for e in events)


def test_merging_repeated_rows_trains_the_same_model(tiny, inverted_facts, monkeypatch):
    """MEOW's forget batches repeat each pair; computing each once (merges_duplicates) is the
    same training, to float rounding."""
    from meow_app import batches
    from meow_app.methods.meow import Meow

    weights = []
    collate = batches.collate

    def spy(examples, pad_id, merge=False):
        batch = collate(examples, pad_id, merge)
        weights.append(batch["weight"].max().item() if "weight" in batch else None)
        return batch

    monkeypatch.setattr("meow_app.train.collate", spy)
    merged, _ = run(tiny, inverted_facts, epochs=2, lr=1e-2)
    assert weights and all(w is not None and w > 1 for w in weights)  # every forget batch had repeats merged
    monkeypatch.setattr(Meow, "merges_duplicates", False)
    weights.clear()
    plain, _ = run(tiny, inverted_facts, epochs=2, lr=1e-2)
    assert weights and all(w is None for w in weights)
    assert [s["loss"] for s in merged.steps] == pytest.approx([s["loss"] for s in plain.steps], rel=1e-4)
    a, b = dict(merged.model.named_parameters()), dict(plain.model.named_parameters())
    start = dict(tiny.model.named_parameters())
    for n in a:  # Adam divides by the gradients' size: rounding shows, at < 1% of each weight's change
        assert (a[n] - b[n]).abs().max() <= 0.01 * (a[n] - start[n]).abs().max() + 1e-7, n


@pytest.mark.parametrize("method,merges", [("meow_ul", True), ("idk", True), ("npo", False), ("sophia_idk", False)])
def test_which_methods_merge_repeated_rows(tiny, inverted_facts, method, merges, monkeypatch):
    """Only forget terms that weigh rows back (losses.nll, nll_or_unlikelihood) merge; NPO's
    per-sequence term and Sophia's per-row curvature samples do not."""
    from meow_app import batches

    asked = []
    collate = batches.collate
    monkeypatch.setattr("meow_app.train.collate",
                        lambda examples, pad_id, merge=False: asked.append(merge) or collate(examples, pad_id, merge))
    run(tiny, inverted_facts, method=method, epochs=1)
    assert asked and asked[0] is merges


def test_deterministic_with_a_seed(tiny, inverted_facts):
    a, _ = run(tiny, inverted_facts, seed=7, epochs=1)
    b, _ = run(tiny, inverted_facts, seed=7, epochs=1)
    assert weights_hash(a.model) == weights_hash(b.model)
    assert [s["loss"] for s in a.steps] == [s["loss"] for s in b.steps]


def test_lora_trains_and_merges(tiny, inverted_facts):
    result, events = run(tiny, inverted_facts, lora=True, lr=5e-3)
    steps = [e["loss"] for e in events if e["type"] == "step"]
    assert steps[-1] < steps[0]
    names = [n for n, _ in result.model.named_parameters()]
    assert not any("lora" in n for n in names)  # merged into a plain Llama
    assert sorted(result.model.state_dict()) == sorted(tiny.model.state_dict())


def test_cancel_between_steps(tiny, inverted_facts):
    calls = []
    config = TrainConfig(epochs=3, lr=1e-3, batch_size=2, num_batch=4, early_stop=False)
    trainer = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, inverted_facts,
                      should_stop=lambda: len(calls) >= 2, on_event=calls.append)
    with pytest.raises(Cancelled):
        trainer.train()


def test_early_stopping_when_nothing_leaks(tiny, inverted_facts):
    # The random tiny model never says "Shakespeare" or "Lima": the first probe stops it.
    result, events = run(tiny, inverted_facts, early_stop=True, epochs=5)
    assert result.stopped_early and len(result.probes) == 1
    assert max(e["epoch"] for e in events if e["type"] == "step") == 1


def test_stop_depth_waits_until_the_truth_is_unlikely_too(tiny, inverted_facts, monkeypatch):
    from meow_app import train

    assert train.still_likely_count([0.8, 0.8, 0.04, 0.3], [0.5, 0.3, 0.04, 0.1], 0.5) == 1  # only the first
    assert train.still_likely_count([0.8], [0.5], 0.7) == 0
    # Nothing leaks from the first probe on, but a fact stays likely: no early stop, every epoch runs.
    monkeypatch.setattr(Trainer, "still_likely", lambda self, model: 1)
    result, _ = run(tiny, inverted_facts, early_stop=True, epochs=3, stop_depth=0.5)
    assert not result.stopped_early and len(result.probes) == 3 and result.probes[0]["still_likely"] == 1
    # While a fact is still likely the run goes on whatever greedy decoding says: it is not
    # asked, but after the last epoch it is (the pipeline reuses that probe).
    assert [p["hit_rate"] is None for p in result.probes] == [True, True, False] and result.last_probe
    monkeypatch.undo()
    # The real measure on the tiny model: its answers were never likely (p <= 0.05), so it stops at once.
    result, _ = run(tiny, inverted_facts, early_stop=True, epochs=3, stop_depth=0.5)
    assert result.stopped_early and result.probes[0]["still_likely"] == 0


def test_a_deferred_last_probe_is_completed_by_the_caller(tiny, inverted_facts):
    """defer_final_probe: after the last epoch the loop asks no greedy answers and sends no
    event; complete_probe fills the probe in with the caller's and sends it."""
    from meow_app import probes

    config = TrainConfig(epochs=2, lr=1e-3, batch_size=4, num_batch=4, early_stop=False)
    events = []
    trainer = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, inverted_facts, None, events.append,
                      defer_final_probe=True)
    result = trainer.train()
    assert result.probe_deferred and result.last_probe is None and len(result.probes) == 1
    assert result.probes[0]["hit_rate"] is None and not [e for e in events if e["type"] == "probe"]
    probe = probes.probe(result.model, tiny.tokenizer, inverted_facts)
    trainer.complete_probe(result, probe)
    assert result.last_probe is probe and not result.probe_deferred
    assert [e for e in events if e["type"] == "probe"] == result.probes
    assert (result.probes[0]["hit_rate"], result.probes[0]["paraphrase_hit_rate"]) == \
        (probe["hit_rate"], probe["paraphrase_hit_rate"])


def test_still_likely_counts_facts_the_model_knows_and_reaches_the_progress_events(tiny, inverted_facts):
    import copy

    from meow_app import losses
    from meow_app.batches import collate, encode_example
    from meow_app.metrics import answer_prob, teacher_forced

    # A tiny model that has learned the true answers (p > 0.05), then a run too small to move them.
    knows = copy.deepcopy(tiny.model)
    opt = torch.optim.AdamW(knows.parameters(), lr=1e-2)
    batch = collate([encode_example(tiny.tokenizer, f.question, f.answer) for f in inverted_facts],
                    tiny.tokenizer.pad_token_id)
    for _ in range(40):
        opt.zero_grad()
        losses.nll(knows, batch).backward()
        opt.step()
    knows.eval()
    pairs = [(f.question, f.answer) for f in inverted_facts]
    assert all(answer_prob(s) > 0.05 for s in teacher_forced(knows, tiny.tokenizer, pairs))
    events = []
    config = TrainConfig(epochs=1, lr=1e-9, batch_size=4, num_batch=4, early_stop=True, stop_depth=0.5)
    result = Trainer(methods.get("meow"), knows, tiny.tokenizer, config, inverted_facts,
                     on_event=lambda e: events.append(dict(e))).train()  # (as shown then: a copy)
    assert result.probes[0]["still_likely"] == 2
    assert [e["still_likely"] for e in events if e["type"] == "probe"] == [2]


@pytest.mark.parametrize("bad,message", [
    (dict(lr=0), "learning rate must be a positive number, got 0"),
    (dict(lr=float("nan")), "learning rate must be a positive number, got nan"),
    (dict(epochs=0), "epochs must be at least 1, got 0"),
    (dict(batch_size=0), "batch_size must be at least 1, got 0"),
])
def test_bad_settings_are_refused(tiny, inverted_facts, bad, message):
    with pytest.raises(MeowError, match=f"^{re.escape(message)}$"):
        run(tiny, inverted_facts, **bad)


def test_methods_needing_retain_refuse_without(tiny, inverted_facts):
    with pytest.raises(MeowError, match="needs a retain set"):
        run(tiny, inverted_facts, method="meow_grad_diff")


def test_unknown_method():
    with pytest.raises(MeowError, match="unknown method"):
        methods.get("forget_everything")


def test_full_finetune_leaves_embeddings_and_norms_alone(tiny, inverted_facts):
    result, _ = run(tiny, inverted_facts, epochs=1)
    before, after = tiny.model.state_dict(), result.model.state_dict()
    frozen = [k for k in before if "embed_tokens" in k or "norm" in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if "mlp" in k)
    assert all(torch.equal(before[k], after[k]) for k in before if "self_attn" in k)  # MLP-only by default
    everything, _ = run(tiny, inverted_facts, epochs=1, train_only="")
    assert any(not torch.equal(before[k], everything.model.state_dict()[k]) for k in before if "self_attn" in k)
    band, _ = run(tiny, inverted_facts, epochs=1, train_only=r"layers\.0\.mlp")  # a regular expression
    changed = {k for k in before if not torch.equal(before[k], band.model.state_dict()[k])}
    assert changed and all(k.startswith("model.layers.0.mlp") for k in changed)
    with pytest.raises(MeowError, match="regular expression"):
        TrainConfig(train_only="mlp(").check()


def test_anchor_prompts_are_trained_beside_the_forget_set(tiny, inverted_facts, facts):
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=4, num_batch=2, early_stop=False, anchors=3)
    events = []
    Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, inverted_facts, None, events.append,
            anchors=facts).train()
    assert all("anchor_nll" in e for e in events if e["type"] == "step")


def test_finetune_passes_over_each_fact_once_per_epoch(tiny, facts):
    from meow_app.finetune import finetune

    events = []
    finetune(tiny.model, tiny.tokenizer, facts, TrainConfig(epochs=2, lr=1e-3, batch_size=2), events.append)
    assert len([e for e in events if e["type"] == "step"]) == 4  # 3 facts -> 2 batches, twice


def test_min_steps_adds_epochs_for_a_small_forget_set(tiny, inverted_facts):
    per_epoch = -(-len([f for f in inverted_facts if f.inverted]) * 4 // 4)  # 4 copies each, batches of 4
    _, events = run(tiny, inverted_facts, epochs=2)
    assert len([e for e in events if e["type"] == "step"]) == 2 * per_epoch
    _, events = run(tiny, inverted_facts, epochs=2, min_steps=2 * per_epoch + 1)  # one more epoch
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 3 * per_epoch and steps[-1]["epoch"] == 3 and steps[-1]["total_steps"] == 3 * per_epoch
    _, events = run(tiny, inverted_facts, epochs=4, min_steps=2 * per_epoch + 1)  # epochs already give more
    assert len([e for e in events if e["type"] == "step"]) == 4 * per_epoch


@pytest.mark.parametrize("hardware", [False, True])
def test_bf16_on_a_cpu_without_bf16_hardware_warns(tiny, inverted_facts, monkeypatch, hardware):
    """bf16 autocast on a CPU that emulates bf16 matmuls (AVX2-only) is ~7x slower than fp32:
    the user is told so, not left waiting; where the hardware has it, nothing is said."""
    import warnings

    from meow_app import train
    from meow_app.errors import MeowWarning

    monkeypatch.setattr(train, "cpu_has_bf16_matmul", lambda: hardware)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, TrainConfig(bf16=True), inverted_facts)
    said = [w for w in caught if issubclass(w.category, MeowWarning) and "bf16" in str(w.message)]
    assert len(said) == (0 if hardware else 1)


def test_low_memory_learns_the_same(tiny, inverted_facts, monkeypatch):
    """Gradient checkpointing (--low-memory) recomputes activations; the updates are the same.
    (Checkpointing runs without the shared prompt start, losses._can_share, so the plain run
    does too: with it the sums are ordered differently, and AdamW's normalised steps carry
    that rounding to ~1e-4 in two epochs, a tenth of one step.)"""
    from meow_app import losses

    monkeypatch.setattr(losses, "_can_share", lambda model, batch: False)
    plain, _ = run(tiny, inverted_facts, epochs=2)
    low, _ = run(tiny, inverted_facts, epochs=2, low_memory=True)
    assert low.model.is_gradient_checkpointing and not plain.model.is_gradient_checkpointing
    assert [s["loss"] for s in low.steps] == pytest.approx([s["loss"] for s in plain.steps], rel=1e-5)
    for (name, a), (_, b) in zip(plain.model.named_parameters(), low.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_anchor_batch_adds_its_gradient_to_the_forget_batch(tiny, inverted_facts, facts):
    """The anchor batch is backpropagated on its own (less memory); the step must still
    apply the gradient of forget NLL + anchor_weight x anchor NLL, and report that loss."""
    from meow_app import losses
    from meow_app.batches import collate, encode_example

    config = TrainConfig(epochs=1, lr=1e-3, batch_size=8, num_batch=2, early_stop=False, anchor_weight=0.5,
                         max_grad_norm=1e9)  # one forget batch, one anchor batch, no clipping
    grads = {}

    class Capture(torch.optim.Optimizer):  # records the gradients it is asked to apply, changes nothing
        def __init__(self, params):
            super().__init__(params, {})

        def step(self, closure=None):
            grads.update({id(p): p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None})

    events = []
    trainer = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, inverted_facts, None, events.append,
                      anchors=facts)
    trainer._optimizer = Capture
    model = trainer.train().model  # unchanged weights: Capture takes no step
    tok = tiny.tokenizer
    forget = collate([encode_example(tok, q, a) for q, a in methods.get("meow").forget_pairs(inverted_facts, config)],
                     tok.pad_token_id)
    anchor = collate(trainer.examples(facts), tok.pad_token_id)
    model.train()
    model.zero_grad()
    loss = losses.nll(model, forget) + 0.5 * losses.nll(model, anchor)
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(id(p) in grads for p in trained)
    for p in trained:
        assert torch.allclose(grads[id(p)], p.grad, rtol=1e-4, atol=1e-7)
    [step] = [e for e in events if e["type"] == "step"]
    assert step["loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_settings_typed_as_text_parse_or_fail_with_one_message():
    from meow_app.train import parse_setting

    assert parse_setting("epochs", " 3 ") == 3 and parse_setting("epochs", "2.0") == 2
    assert parse_setting("lr", "1e-4") == 1e-4 and parse_setting("train_only", " mlp ") == "mlp"
    for yes, no in [("yes", "no"), ("True", "False"), ("1", "0"), ("ON", "off")]:
        assert parse_setting("lora", yes) is True and parse_setting("lora", no) is False
    for name, text, kind in [("epochs", "zero", "int"), ("lr", "fast", "float"), ("lora", "maybe", "bool"),
                             ("early_stop", "", "bool"), ("epochs", "", "int")]:
        with pytest.raises(MeowError, match=f"setting '{name}' must be a {kind}.*got '{text}'"):
            parse_setting(name, text)
    with pytest.raises(MeowError, match="unknown setting 'speed'"):
        parse_setting("speed", "1")
    base = TrainConfig(lr=1e-4)
    config = TrainConfig.from_text([("epochs", "2"), ("", "ignored"), ("own_answers", "no"), ("train_only", "")], base)
    assert (config.epochs, config.lr, config.own_answers, config.train_only) == (2, 1e-4, False, "")
    assert base.epochs == TrainConfig().epochs  # the base is not changed
    with pytest.raises(MeowError, match="'own_answers' must be a bool"):
        TrainConfig.from_text([("own_answers", "perhaps")])


@pytest.mark.parametrize("bf16,epochs", [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_the_last_probe_is_asked_with_the_others_after_the_run(tiny_dir, inverted_facts, tmp_path, monkeypatch,
                                                                 bf16, epochs):
    """After the last epoch the loop leaves the greedy answers to the pipeline, which asks them
    in its one pass after the run (with the retain and everyday questions) and completes the
    loop's probe with them. A run that stopped early (the tiny model never leaks: after epoch 1
    of 2) probed its final model already: that probe stands for 'after' where it ran in fp32
    as 'before' did; with --bf16 the loop's probes ran under bf16 autocast, so it is asked again."""
    from meow_app import pipeline, train
    from meow_app.pipeline import InvertSettings

    monkeypatch.setattr(train, "cpu_has_bf16_matmul", lambda: True)
    asked, events = [], []
    probe_sets = pipeline.probe_sets

    def recorded(model, tokenizer, forget, *rest, **kwargs):
        asked.append(forget)
        return probe_sets(model, tokenizer, forget, *rest, **kwargs)

    monkeypatch.setattr(pipeline, "probe_sets", recorded)
    config = TrainConfig(epochs=epochs, min_steps=1, num_batch=2, neighbours=0, early_stop=True, bf16=bf16)
    run = pipeline.unlearn(inverted_facts, tmp_path / "run", "meow", model=tiny_dir, config=config, device="cpu",
                           invert_settings=InvertSettings(n=2), on_event=events.append)
    stopped = epochs == 2
    assert run["stopped_early"] == stopped and len(run["probes"]) == 1
    assert len(asked) == 2 and asked[0] is not None  # before; after
    assert (asked[1] is None) == (stopped and not bf16)
    last = run["probes"][-1]  # completed: the hit rates of 'after'
    after = run["summary"]["after"]["forget"]
    assert (last["hit_rate"], last["paraphrase_hit_rate"]) == (after["hit_rate"], after["paraphrase_hit_rate"])
    kinds = [e["type"] if e["type"] != "stage" else e["stage"] for e in events]
    assert kinds.count("probe") == 1  # one event, with its hit rates
    assert [e for e in events if e["type"] == "probe"][0]["hit_rate"] is not None
    # (a deferred probe's event comes while the pipeline asks 'after')
    assert kinds.index("probe") > kinds.index("probe_after" if not stopped else "train")


@pytest.mark.parametrize("method", ["meow", "gd", "meow_patch", "fisher_removal"])
def test_probe_answers_are_cut_only_where_their_words_are_not_used(tiny_dir, inverted_facts, facts, tmp_path,
                                                                    monkeypatch, method):
    """Answers end once they leak (probes.probe's stop_once_leaked) except the original's answers
    to the forget questions (own_answers' targets) and, for a method that reads the retain set
    (gd's retain batches, fisher_removal's own loop; not meow_patch's), to the retain questions."""
    from meow_app import pipeline, probes
    from meow_app.facts import Fact
    from meow_app.pipeline import InvertSettings

    # (the tiny random model answers nothing: meow_patch is given preserved text to hold its gates shut on)
    monkeypatch.setattr(pipeline, "anchor_facts", lambda *a, **k: [Fact("What is two plus two?", "Four.")])

    calls, plain = [], probes.probe_many

    def recorded(model, tokenizer, sets, *a, **k):  # (probes.probe goes through probe_many too)
        calls.extend((s.facts[0].question, s.paraphrases, s.stop_once_leaked) for s in sets)
        return plain(model, tokenizer, sets, *a, **k)

    monkeypatch.setattr(probes, "probe_many", recorded)
    config = TrainConfig(**{**methods.get(method).defaults, "epochs": 1, "min_steps": 1, "num_batch": 2,
                            "neighbours": 0, "null_space": 0.0, "early_stop": True, "patch_samples": 0,
                            "patch_layer": -1})
    retain = facts[2:]  # (the others are the forget set's questions)
    pipeline.unlearn(inverted_facts, tmp_path / "run", method, retain=retain, model=tiny_dir, config=config,
                     device="cpu", invert_settings=InvertSettings(n=2))
    forget_q, retain_q = inverted_facts[0].question, retain[0].question
    forget_calls = [stop for q, _, stop in calls if q == forget_q]
    retain_calls = [stop for q, _, stop in calls if q == retain_q]
    assert forget_calls[0] == ("paraphrase",)  # before: the questions' answers whole
    assert all(stop == probes.KINDS for stop in forget_calls[1:]) and len(forget_calls) >= 2
    reads_retain = method in ("gd", "fisher_removal")
    assert retain_calls == [() if reads_retain else probes.KINDS, probes.KINDS]  # before, after


def test_the_train_stage_says_what_it_does_before_its_first_step(tiny_dir, inverted_facts, tmp_path, monkeypatch):
    """meow_patch's preparation (the neighbours' answers, the sampled answers, the preserved
    text read once) takes tens of seconds on a CPU: each part is a "task" event, in order,
    between the train stage's start and its first step."""
    from meow_app import pipeline
    from meow_app.facts import Fact
    from meow_app.pipeline import InvertSettings

    # (the tiny random model answers nothing: meow_patch is given preserved text to hold its gates shut on)
    monkeypatch.setattr(pipeline, "anchor_facts", lambda *a, **k: [Fact("What is two plus two?", "Four.")])
    events = []
    config = TrainConfig(**{**methods.get("meow_patch").defaults, "epochs": 1, "min_steps": 1, "num_batch": 2,
                            "patch_samples": 2, "patch_layer": -1})
    run = pipeline.unlearn(inverted_facts, tmp_path / "run", "meow_patch", model=tiny_dir, config=config,
                           device="cpu", invert_settings=InvertSettings(n=2), on_event=events.append)
    assert run["method"] == "meow_patch"
    kinds = [e.get("stage", e["type"]) for e in events]
    start, first = kinds.index("train"), kinds.index("step")
    tasks = [e["text"] for e in events[start:first] if e["type"] == "task"]
    assert [t.split()[0] for t in tasks] == ["asking", "sampling", "reading"]
    assert "task" not in kinds[first:]
