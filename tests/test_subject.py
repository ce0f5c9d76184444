"""subject_only: the trained weights learn from the subject's positions alone; values never change."""

import copy

import pytest
import torch

from meow_app import losses, methods
from meow_app.batches import collate
from meow_app.errors import MeowError
from meow_app.facts import Fact
from meow_app.null_space import trained_linears
from meow_app.subject import SubjectKeys, key_tokens, subject_of, subject_positions
from meow_app.train import TrainConfig, Trainer

# Byte tokens (tests/tiny.py): the subject's letters Z, Q, X appear nowhere else in its examples.
FORGET = [Fact("Who wrote ZQX?", "Anne Brown", ["Brown"], inverted=["Carl Dane", "Dora Fell"])]


def test_the_subject_is_what_follows_the_question_frame():
    assert subject_of("What is the capital of New Zealand?") == "New Zealand"
    assert subject_of("Who wrote 'Fahrenheit 451'?") == "Fahrenheit 451"
    assert subject_of("Who founded the Ford Motor Company?") == "Ford Motor Company"
    assert subject_of("who invented the telephone?") == ""  # no frame: no telling subject from relation
    assert subject_of("Einstein was born where?") == ""


def test_positions_cover_every_occurrence_case_blind(tiny):
    tok = tiny.tokenizer
    ids = tok("Who wrote ZQX? zqx wrote it, ZQ")["input_ids"]
    covered = subject_positions(tok, ids, "ZQX")
    assert "".join(tok.decode([t]) for t, c in zip(ids, covered) if c) == "ZQXzqx"
    # Ids also used outside a subject are left out: 'Q' of the second example's 'Quiz'.
    examples = [(tok("Who wrote ZQX?")["input_ids"], "ZQX"), (tok("Quiz about Y")["input_ids"], "Y")]
    keys, unkeyed = key_tokens(tok, examples)
    assert {tok.decode([t]) for t in keys} == {"Z", "X", "Y"} and unkeyed == []
    # An example whose subject's tokens all occur elsewhere too is named: 'o' of 'Who', 'wrote'.
    assert key_tokens(tok, examples + [(tok("Who wrote o?")["input_ids"], "o")])[1] == [2]


def _trainable(tiny):
    model = copy.deepcopy(tiny.model).float()
    for name, p in model.named_parameters():
        p.requires_grad_("mlp" in name)
    return model


def test_weight_gradients_come_from_subject_positions_alone(tiny):
    """Checked against the definition: a linear layer's weight gradient is sum_t g_t x_t^T, so
    with only subject positions t it lies in the span of those positions' inputs, and it
    vanishes on every direction orthogonal to them; the plain gradient does not. The loss's
    value is the same with and without the cut."""
    tok = tiny.tokenizer
    trainer = Trainer(methods.get("meow"), tiny.model, tok, TrainConfig(), FORGET)
    pairs = methods.get("meow").forget_pairs(FORGET, TrainConfig(num_batch=4))
    examples = [trainer.examples([Fact(q, a)])[0] for q, a in pairs]
    ids = key_tokens(tok, [(e.ids, subject_of(q)) for e, (q, _) in zip(examples, pairs)])[0]
    assert {tok.decode([t]) for t in ids} == {"Z", "Q", "X"}
    batch = collate(examples, tok.pad_token_id, merge=True)  # the shared passes: rows are not the batch's

    def grads(cut: bool):
        model = _trainable(tiny)
        seen = {name: [] for name in trained_linears(model)}
        if cut:
            keys = SubjectKeys(model, ids)
            for name, m in trained_linears(model).items():  # the inputs at subject positions, per layer
                m.register_forward_hook(lambda m, i, o, name=name: seen[name].append(i[0][keys.mask[..., 0]]))
        with keys.forget_scope() if cut else torch.enable_grad():
            loss = losses.nll(model, batch)
        loss.backward()
        return loss.item(), {n: m.weight.grad for n, m in trained_linears(model).items()}, seen

    loss_cut, cut, seen = grads(True)
    loss_plain, plain, _ = grads(False)
    assert loss_cut == pytest.approx(loss_plain, rel=1e-6)
    for name, g in cut.items():
        x = torch.cat(seen[name]).double()
        assert 0 < len(x) < x.shape[1]  # a few subject tokens: a narrow span, so the check has teeth
        q = torch.linalg.qr(x.T)[0]  # an orthonormal basis of the subject inputs
        off = lambda w: (w.double() - (w.double() @ q) @ q.T).norm() / w.double().norm()  # noqa: E731
        assert off(plain[name]) > 0.1, name
        if ".layers.1." in name:  # the last layer at the subject's tokens reaches no answer token: no gradient
            assert torch.count_nonzero(g) == 0 and torch.count_nonzero(plain[name]) > 0, name
        else:
            assert g.norm() > 0 and off(g) < 1e-5, name


def test_a_subject_only_run_learns_the_false_answer_and_says_what_it_keyed_on(tiny):
    config = TrainConfig(subject_only=True, epochs=12, lr=1e-2, batch_size=4, num_batch=4, early_stop=False)
    result = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, FORGET).train()
    assert result.info["subject_only"] == {"subject_tokens": 3, "questions_without_subject_tokens": []}
    trainer = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, TrainConfig(), FORGET)
    batch = collate(trainer.examples([Fact(FORGET[0].question, "Carl Dane")]), tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        assert losses.nll(result.model, batch) < losses.nll(tiny.model, batch) - 0.1  # (one layer learns: 5.69 -> 5.54)
    hooks = lambda model: [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]  # noqa: E731
    assert hooks(result.model) == hooks(tiny.model)  # its hooks are gone from the saved model (the copy's only)


def test_settings_it_cannot_hold_are_refused(tiny):
    with pytest.raises(MeowError, match="does not go with low_memory"):
        Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, TrainConfig(subject_only=True, low_memory=True),
                FORGET)
    with pytest.raises(MeowError, match="makes its own update"):
        Trainer(methods.get("meow_edit"), tiny.model, tiny.tokenizer, TrainConfig(subject_only=True), FORGET)


def test_no_subject_token_of_its_own_warns_and_trains_every_position(tiny):
    from meow_app.errors import MeowWarning

    facts = [Fact("Who wrote eon?", "Anne Brown", ["Brown"], inverted=["Carl Dane"])]  # e, o, n: used elsewhere
    config = TrainConfig(subject_only=True, epochs=1, batch_size=4, num_batch=4, early_stop=False)
    with pytest.warns(MeowWarning, match="found no token"):
        result = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, facts).train()
    assert result.steps and result.info["subject_only"]["subject_tokens"] == 0


def test_subject_other_keeps_that_share_of_the_other_positions_gradient(tiny):
    """One trained layer: its gradient is the subject positions' part plus `other` times the
    rest, so it is linear in `other`, and other=1 is the plain gradient."""
    tok = tiny.tokenizer
    trainer = Trainer(methods.get("meow"), tiny.model, tok, TrainConfig(), FORGET)
    examples = trainer.examples([Fact(FORGET[0].question, "Carl Dane")])
    ids = key_tokens(tok, [(examples[0].ids, "ZQX")])[0]
    batch = collate(examples, tok.pad_token_id)

    def grad(other):
        model = copy.deepcopy(tiny.model).float()
        for p in model.parameters():
            p.requires_grad_(False)
        layer = model.model.layers[0].mlp.down_proj
        layer.weight.requires_grad_(True)
        keys = SubjectKeys(model, ids, other) if other is not None else None
        with keys.forget_scope() if keys else torch.enable_grad():
            losses.nll(model, batch).backward()
        return layer.weight.grad.double()

    none, half, full, plain = grad(0.0), grad(0.5), grad(1.0), grad(None)
    assert torch.allclose(full, plain, atol=1e-9) and not torch.allclose(none, plain, atol=1e-6)
    assert torch.allclose(half, (none + full) / 2, atol=1e-9)
    with pytest.raises(MeowError, match="subject_other must be between 0 and 1"):
        Trainer(methods.get("meow"), tiny.model, tok, TrainConfig(subject_only=True, subject_other=2), FORGET)


def test_subject_first_asks_every_other_copy_with_the_subject_first_and_keys_its_tokens(tiny):
    from meow_app.subject import subject_first

    pairs = [("Who wrote ZQX?", "Carl Dane"), ("Who wrote ZQX?", "Dora Fell", "Z")] * 2
    assert subject_first(pairs) == [("Who wrote ZQX?", "Carl Dane"), ("ZQX: Who wrote ZQX?", "Dora Fell", "Z"),
                                     ("Who wrote ZQX?", "Carl Dane"), ("ZQX: Who wrote ZQX?", "Dora Fell", "Z")]
    config = TrainConfig(subject_only=True, subject_first=True, epochs=1, batch_size=4, num_batch=4,
                         early_stop=False)
    result = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, FORGET).train()
    # The subject of the rewritten questions is still ZQX (not 'ZQX: Who'): its 3 byte tokens, each question keyed.
    assert result.info["subject_only"] == {"subject_tokens": 3, "questions_without_subject_tokens": []}


@pytest.mark.parametrize("settings", [{"train_only": ""}, {"train_only": "", "train_embeddings": True}])
def test_with_attention_or_the_output_layer_trained_the_forget_term_still_has_a_gradient(tiny, settings):
    """The weights are held at the other positions, not the layer: the gradient still flows
    through every layer (attention carries the answer's loss back to the subject), and the
    output layer, which sees no subject position, is left alone."""
    config = TrainConfig(subject_only=True, epochs=1, batch_size=4, num_batch=4, early_stop=False, lr=1e-2,
                         **settings)
    result = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, FORGET).train()
    assert result.steps and all(s["grad_norm"] > 0 for s in result.steps)
    moved = [n for n, p in result.model.named_parameters()
             if not torch.equal(p, dict(tiny.model.named_parameters())[n])]
    assert any("self_attn" in n for n in moved) and any("mlp" in n for n in moved)
