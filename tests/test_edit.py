"""meow_edit (meow_app/edit.py): the closed-form write against a plain primal solve, the key
token, and on the tiny model an edit that learns the false answer while the preserved
text's outputs stay exactly as they were."""

import pytest
import torch

from meow_app import edit, losses, methods
from meow_app.batches import collate
from meow_app.errors import MeowError, MeowWarning
from meow_app.facts import Fact
from meow_app.generation import chat_prompt
from meow_app.null_space import eigen_split
from meow_app.train import TrainConfig, Trainer
from tiny import answer_logits
from test_train import weights_hash

FORGET = [Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"], inverted=["Charles Dickens"]),
          Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco"])]
PRESERVED = [Fact("Capital of Chad?", "Ndjamena")]  # fewer byte tokens than down_proj's 128 inputs


def test_the_write_equals_the_plain_projected_least_squares_solution():
    gen = torch.Generator().manual_seed(0)
    d, out, n = 12, 5, 3
    preserved = torch.randn(20, 4, dtype=torch.float64, generator=gen) @ torch.randn(4, d, dtype=torch.float64,
                                                                                     generator=gen)
    keys = torch.randn(n, d, dtype=torch.float64, generator=gen)
    residuals = torch.randn(n, out, dtype=torch.float64, generator=gen)
    u, v = eigen_split(preserved.T @ preserved, 1.0)
    p = torch.eye(d, dtype=torch.float64) - u @ u.T
    damping = 0.05
    lam = damping * float(keys.square().sum(-1).mean())
    # The primal form: argmin ||dW K^T - R^T||^2 + lam ||dW||^2 over dW = dW P (a d x d solve).
    kp = keys @ p
    plain = residuals.T @ kp @ torch.linalg.inv(kp.T @ kp + lam * torch.eye(d, dtype=torch.float64))
    for basis, free in [(u, False), (v, True)]:  # U held, or the free directions V: the same P
        change = edit.solve(keys.float(), residuals.float(), basis, free, damping).double()
        assert torch.allclose(change, plain, atol=1e-5)
    assert (edit.solve(keys.float(), residuals.float(), u, False, damping).double() @ preserved.T).abs().max() < 1e-4
    # No constraint and a tiny damping: every key gets its residual.
    change = edit.solve(keys.float(), residuals.float(), None, False, 1e-9).double()
    assert torch.allclose(change @ keys.T, residuals.T, atol=1e-3)


@pytest.mark.parametrize("question,word", [("What is the capital of Ukraine?", "Ukraine"),
                                           ("Who wrote 'Fahrenheit 451'?", "451"),
                                           ("Who founded Microsoft", "Microsoft")])
def test_the_key_is_the_questions_last_word_token(tiny, question, word):
    tok = tiny.tokenizer
    prompt = chat_prompt(tok, question)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    at = edit.key_position(tok, prompt, question)
    assert tok.decode(ids[at]) == word[-1]  # the tiny tokenizer is byte-level: the word's last byte
    assert word in tok.decode(ids[:at + 1])[-len(word) - 1:]


def test_the_cached_target_pass_equals_plain_forward_passes(tiny):
    """targets() computes the system prompt once, each question once and each false answer from
    its question's cache: its first loss and the residual it starts from must be what one plain
    forward pass per (question, false answer) row gives."""
    from tiny import sharp_tiny_model  # attention that depends on positions, padding and the cache

    tok, model = tiny.tokenizer, sharp_tiny_model(tiny.tokenizer)
    questions = ["Who wrote Hamlet?", "What is the capital of the Republic of Peru?"]
    answers = [["Charles Dickens", "Jane Austen wrote it."], ["Cusco"]]
    z, positions, history = edit.targets(model, tok, questions, answers, 0, steps=1, lr=1e-9)  # z ~ the start
    nlls, residuals = [], {}
    block = model.model.layers[0]
    for i, (q, options) in enumerate(zip(questions, answers)):
        prompt = tok(chat_prompt(tok, q), add_special_tokens=False)["input_ids"]
        assert positions[i] == edit.key_position(tok, chat_prompt(tok, q), q)
        for a in options:
            ids = prompt + tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            handle = block.register_forward_hook(lambda m, inp, out: residuals.__setitem__(i, out[0][0]
                                                 if isinstance(out, tuple) else out[0]))
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, len(prompt) - 1:-1]
            handle.remove()
            nlls.append(float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[len(prompt):]))))
    assert history[0] == pytest.approx(sum(nlls) / len(nlls), rel=1e-5)
    for i in range(2):  # the residual the deltas start from: the plain pass's at the key token
        assert torch.allclose(z[i], residuals[i][positions[i]], atol=1e-4)
        assert not torch.allclose(z[i], residuals[i][positions[i] - 1], atol=1e-2)


def test_the_band_is_checked_against_the_model(tiny):
    assert edit.band(tiny.model) == [0]  # never the last layer: its write would reach no later position
    assert edit.band(tiny.model, "0") == [0]
    with pytest.raises(ValueError, match="within layers 0-0"):
        edit.band(tiny.model, "0-1")
    with pytest.raises(MeowError, match="edit_layers must look like"):
        TrainConfig(edit_layers="four").check()


def _edit(tiny, null_space, **cfg):
    config = TrainConfig(**{**methods.get("meow_edit").defaults, "null_space": null_space, "neighbours": 0,
                            "epochs": 1, "edit_steps": 30, "edit_lr": 0.5, "edit_clamp": 4.0, "early_stop": False,
                            **cfg})
    trainer = Trainer(methods.get("meow_edit"), tiny.model, tiny.tokenizer, config, FORGET, anchors=PRESERVED)
    return trainer, trainer.train()


def _false_answer_nll(model, trainer):
    batch = collate(trainer.examples([Fact(f.question, f.inverted[0]) for f in FORGET]), trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        return float(losses.nll(model, batch))


def test_the_edit_writes_the_false_answers_and_leaves_preserved_outputs_unchanged(tiny):
    before_hash = weights_hash(tiny.model)
    trainer, result = _edit(tiny, 1.0)
    assert weights_hash(tiny.model) == before_hash  # the original is untouched
    before, after = answer_logits(tiny.model, trainer, PRESERVED), answer_logits(result.model, trainer, PRESERVED)
    assert (after - before).abs().max() < 1e-4 * before.abs().max()
    assert _false_answer_nll(result.model, trainer) < _false_answer_nll(tiny.model, trainer) - 0.05
    # Only the band's down-projection changed.
    changed = {n for (n, a), b in zip(result.model.named_parameters(), tiny.model.parameters())
               if not torch.equal(a, b)}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}
    info = result.info["edit"]
    assert info["layers"] == [0] and info["false_answers"] == 2 and result.info["null_space"]["held_directions"]
    assert info["rounds"][0]["target_nll"][-1] < info["rounds"][0]["target_nll"][0]
    # Without the constraint the same edit moves the preserved outputs.
    _, free = _edit(tiny, 0.0)
    moved = answer_logits(free.model, trainer, PRESERVED)
    assert (moved - before).abs().max() > 100 * (after - before).abs().max()


def test_rounds_stop_once_nothing_leaks(tiny):
    # The tiny model never says the facts, so the probe after the first round ends the run.
    trainer, result = _edit(tiny, 0.99, epochs=3, early_stop=True)
    assert len(result.steps) == 1 and result.stopped_early and len(result.info["edit"]["rounds"]) == 1


def test_settings_it_cannot_run_with_are_refused_before_any_work(tiny):
    from meow_app import distributed

    with pytest.raises(MeowError, match="runs in one process \\(it writes in closed form\\)"):
        distributed.check_method(methods.get("meow_edit"), 2)
    with pytest.raises(MeowError, match="--lora and --shard do not apply"):
        Trainer(methods.get("meow_edit"), tiny.model, tiny.tokenizer, TrainConfig(lora=True), FORGET)
    with pytest.raises(MeowError, match="--lora and --shard do not apply"):
        methods.get("meow_edit").check(TrainConfig(shard=True))


def test_every_round_runs_the_model_in_eval_mode(tiny, monkeypatch):
    # The probes after a round put the model in training mode; the next round must not run
    # there (dropout; with low_memory, checkpointing drops the prompt's KV cache).
    modes, targets = [], edit.targets
    monkeypatch.setattr(edit, "targets", lambda model, *a, **k: modes.append(model.training) or targets(model, *a, **k))
    _, result = _edit(tiny, 0.99, epochs=2, low_memory=True)
    assert len(result.info["edit"]["rounds"]) == 2 and modes == [False, False]


def test_a_fact_without_a_false_answer_is_named_not_skipped_silently(tiny):
    # Written for one fact, the other left as it is: the user is told which, and run.json says how many.
    forget = [FORGET[0], Fact(FORGET[1].question, FORGET[1].answer, FORGET[1].keywords)]
    config = TrainConfig(**{**methods.get("meow_edit").defaults, "null_space": 0.0, "neighbours": 0,
                            "edit_steps": 2, "early_stop": False})
    with pytest.warns(MeowWarning, match="no false answer for 1 of 2 facts.*capital of Peru"):
        result = Trainer(methods.get("meow_edit"), tiny.model, tiny.tokenizer, config, forget).train()
    assert result.info["edit"]["false_answers"] == 1 and result.info["edit"]["facts_without_false_answers"] == 1


def _block_output(model, tok, texts, layer):
    """Block `layer`'s output at each text's key token, each text alone in its chat prompt."""
    seen = []
    handle = edit.decoder_layers(model)[layer].register_forward_hook(
        lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o)[0]))
    rows = []
    try:
        with torch.no_grad():
            for text in texts:
                prompt = chat_prompt(tok, text)
                model(input_ids=torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]]))
                rows.append(seen.pop()[edit.key_position(tok, prompt, text)])
    finally:
        handle.remove()
    return torch.stack(rows).float()


def test_extra_contexts_are_written_with_their_facts_change(tiny):
    """edit_contexts: a message that ends with a fact's subject gets the fact's delta at its own
    key (its residual before the write + z_i - question i's residual), beside the questions'."""
    import copy

    model, tok = copy.deepcopy(tiny.model), tiny.tokenizer
    questions = [f.question for f in FORGET]
    extra = [("Peru", [1]), ("Tell me about Peru", [1]), ("Hamlet", [0]), ("Tell me about both", [0, 1])]
    texts = questions + [t for t, _ in extra]
    before = _block_output(model, tok, texts, 0)
    delta = 0.05 * torch.randn(2, before.shape[1], generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([edit.key_position(tok, chat_prompt(tok, q), q) for q in questions])
    edit.spread(model, tok, questions, before[:2] + delta, positions, [0], None, 1e-9, "cpu", extra)
    after = _block_output(model, tok, texts, 0)
    assert torch.allclose(after[:5] - before[:5], delta[[0, 1, 1, 1, 0]], atol=2e-3)
    assert torch.allclose(after[5] - before[5], delta.mean(0), atol=2e-3)  # two facts' message: their mean
    # Without them the same write leaves those messages' keys elsewhere.
    plain = copy.deepcopy(tiny.model)
    edit.spread(plain, tok, questions, before[:2] + delta, positions, [0], None, 1e-9, "cpu")
    moved = _block_output(plain, tok, texts, 0)
    assert torch.allclose(moved[:2] - before[:2], delta, atol=2e-3)
    assert not torch.allclose(moved[2:5] - before[2:5], delta[[1, 1, 0]], atol=2e-2)


def test_edit_contexts_come_from_the_subject_and_are_counted(tiny):
    assert edit.key_contexts(["Ukraine", "", "Ukraine"], 2) == [("Ukraine", [0, 2]), ("Tell me about Ukraine", [0, 2])]
    assert edit.key_contexts([""], 4) == []  # no frame, no subject: the question alone
    with pytest.raises(MeowError, match="edit_contexts must be between 0 and 4"):
        TrainConfig(edit_contexts=5).check()
    _, result = _edit(tiny, 0.99, edit_contexts=2)
    assert result.info["edit"]["key_contexts"] == 4  # "Hamlet" and "Peru", 2 messages each


def _edit_first(tiny, **cfg):
    config = TrainConfig(**{**methods.get("meow").defaults, "null_space": 1.0, "neighbours": 0, "min_steps": 0,
                            "min_epochs": 0, "edit_first": True, "edit_steps": 30, "edit_lr": 0.5, "edit_clamp": 4.0,
                            **cfg})
    trainer = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, FORGET, anchors=PRESERVED)
    return trainer, trainer.train()


def test_edit_first_writes_before_the_first_step_and_a_clean_probe_ends_the_run(tiny):
    # The tiny model never says the facts: the probe after the write finds nothing, so no step runs.
    trainer, result = _edit_first(tiny)
    assert result.stopped_early and not result.steps and [p["epoch"] for p in result.probes] == [0]
    info = result.info["edit_first"]
    assert info["layers"] == [0] and info["round"]["target_nll"][-1] < info["round"]["target_nll"][0]
    changed = {n for (n, a), b in zip(result.model.named_parameters(), tiny.model.parameters())
               if not torch.equal(a, b)}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}
    before, after = answer_logits(tiny.model, trainer, PRESERVED), answer_logits(result.model, trainer, PRESERVED)
    assert (after - before).abs().max() < 1e-4 * before.abs().max()
    assert _false_answer_nll(result.model, trainer) < _false_answer_nll(tiny.model, trainer) - 0.05


def test_a_clean_probe_after_the_write_still_waits_for_min_epochs(tiny):
    _, result = _edit_first(tiny, min_epochs=1, epochs=2)
    assert len(result.steps) == 1 and result.stopped_early and [p["epoch"] for p in result.probes] == [0, 1]


def test_the_projection_keeps_the_write(tiny):
    # The write lies in the held directions' null space already: projecting after it changes nothing.
    from meow_app.train import TrainResult

    config = TrainConfig(**{**methods.get("meow").defaults, "null_space": 0.99, "neighbours": 0, "min_epochs": 0,
                            "edit_first": True, "edit_steps": 30, "edit_lr": 0.5, "edit_clamp": 4.0})
    trainer = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, FORGET, anchors=PRESERVED)
    model = trainer._trainable_copy(project=True)
    result = TrainResult(model=model)
    projection = trainer.projection(model, trainer.examples(PRESERVED), result)
    down = model.model.layers[0].mlp.down_proj.weight
    start = down.detach().clone()
    trainer.edit_first(model, projection, result)
    written = down.detach().clone()
    projection.project()
    assert (written - start).norm() > 0.01 * start.norm()
    assert (down - written).norm() < 1e-4 * (written - start).norm()


def test_edit_first_then_fine_tuning_keeps_the_preserved_outputs(tiny):
    # Without early stopping the loop runs after the write; the projection holds both.
    trainer, result = _edit_first(tiny, early_stop=False, epochs=2)
    assert len(result.steps) == 2 and result.info["edit_first"]["round"]
    before, after = answer_logits(tiny.model, trainer, PRESERVED), answer_logits(result.model, trainer, PRESERVED)
    assert (after - before).abs().max() < 1e-4 * before.abs().max()
    _, edited = _edit_first(tiny)  # the write alone
    assert _false_answer_nll(result.model, trainer) < _false_answer_nll(edited.model, trainer)


def test_edit_first_is_refused_where_it_cannot_write(tiny, monkeypatch):
    from meow_app import pipeline

    for method, cfg, message in (("meow_edit", {}, "does not fine-tune on false answers"),
                                 ("ga", {}, "does not fine-tune on false answers"),
                                 ("meow", {"lora": True}, "--lora and --shard do not go with it")):
        config = TrainConfig(**{**methods.get(method).defaults, "edit_first": True, **cfg})
        with pytest.raises(MeowError, match=message):
            Trainer(methods.get(method), tiny.model, tiny.tokenizer, config, FORGET)
        with pytest.raises(MeowError, match=message):  # before any work
            pipeline._check_job(FORGET, method, None, config, None, None)
    # A frozen band would be written with no held directions: refused.
    with pytest.raises(MeowError, match="train_only leaves layer 0's frozen"):
        _edit_first(tiny, train_only="self_attn")
    # One process only: each would write its own edit.
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = TrainConfig(**{**methods.get("meow").defaults, "edit_first": True})
    with pytest.raises(MeowError, match="edit_first runs in one process"):
        pipeline._check_job(FORGET, "meow", None, config, None, None)
