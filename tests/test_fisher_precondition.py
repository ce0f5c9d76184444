"""fisher_precondition: each step's change scaled by lambda / (F + lambda), F the diagonal
Fisher of the preserved text, checked against a plain computation and on the tiny model."""

import pytest
import torch

from meow_app import fisher, methods, pipeline
from meow_app.batches import collate, encode_example
from meow_app.errors import MeowError
from meow_app.facts import Fact
from meow_app.pipeline import InvertSettings, SelectSettings
from meow_app.train import TrainConfig, Trainer
from tiny import answer_logits

FORGET = [Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"], inverted=["Charles Dickens"])]
PRESERVED = [Fact("Capital of Peru?", "Lima"), Fact("Who painted the Mona Lisa?", "Leonardo")]


def test_the_scales_are_lambda_over_the_fisher_plus_lambda(tiny):
    tok, model = tiny.tokenizer, tiny.model
    params = [model.model.layers[0].mlp.down_proj.weight, model.model.layers[1].mlp.up_proj.weight]
    examples = [encode_example(tok, f.question, f.answer) for f in PRESERVED]
    for p in params:
        p.requires_grad_(True)
    scale = fisher.StepScale(model, params, examples, tok.pad_token_id, "cpu", 0.5)
    squares = []
    for e in examples:  # the plain Fisher: the mean of the squared per-example gradients
        model.zero_grad()
        from meow_app import losses
        losses.nll(model, collate([e], tok.pad_token_id)).backward()
        squares.append([p.grad.square() for p in params])
    model.zero_grad()
    fisher_diag = [sum(s[i] for s in squares) / len(squares) for i in range(len(params))]
    lam = 0.5 * float(torch.cat([f.reshape(-1) for f in fisher_diag]).mean())
    for s, f in zip(scale.scales, fisher_diag):
        assert torch.allclose(s, lam / (f + lam), rtol=1e-4)
    # theta <- before + s * (theta - before)
    before = scale.start()
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    scale.apply(before)
    for p, b, s in zip(params, before, scale.scales):
        assert torch.allclose(p - b, s, atol=1e-6)
        p.data.copy_(b)


def _train(tiny, precondition):
    config = TrainConfig(epochs=6, lr=1e-2, batch_size=4, num_batch=4, early_stop=False, train_only="down_proj",
                         fisher_precondition=precondition, anchor_weight=0.0)
    trainer = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, FORGET, anchors=PRESERVED)
    return trainer, trainer.train()


def test_preconditioned_steps_move_the_preserved_outputs_less_and_still_learn(tiny):
    from meow_app import losses

    trainer, held = _train(tiny, 0.1)
    _, plain = _train(tiny, 0.0)
    before = answer_logits(tiny.model, trainer, PRESERVED)
    moved_held = float((answer_logits(held.model, trainer, PRESERVED) - before).abs().mean())
    moved_plain = float((answer_logits(plain.model, trainer, PRESERVED) - before).abs().mean())
    info = held.info["fisher_precondition"]
    assert info["examples"] == 2 and 0 < info["mean_scale"] < 1
    false = collate(trainer.examples([Fact(FORGET[0].question, "Charles Dickens")]), tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        start = float(losses.nll(tiny.model, false))
        learned_held = start - float(losses.nll(held.model, false))
        learned_plain = start - float(losses.nll(plain.model, false))
    # The false answer is still learned, and the preserved text gives up less than the forget set does.
    assert learned_held > 0.3 and moved_held < 0.5 * moved_plain
    assert moved_held / moved_plain < learned_held / learned_plain


def test_bad_values_and_one_shot_methods_are_refused(tiny):
    with pytest.raises(MeowError, match="fisher_precondition must be 0"):
        TrainConfig(fisher_precondition=-1).check()
    with pytest.raises(MeowError, match="not with --lora, --shard nor a one-shot method"):
        Trainer(methods.get("fisher_removal"), tiny.model, tiny.tokenizer, TrainConfig(fisher_precondition=0.1), FORGET)
    # LoRA's B starts at zero: the preserved text's Fisher on A is zero, so A would go unheld.
    with pytest.raises(MeowError, match="not with --lora"):
        Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, TrainConfig(fisher_precondition=0.1, lora=True),
                FORGET)
    # ... refused before any work: the pipeline's own check (what the CLI and the app call first)
    with pytest.raises(MeowError, match="not with --lora"):
        pipeline._check_job(FORGET, "meow", None, TrainConfig(fisher_precondition=0.1, lora=True),
                            InvertSettings(), SelectSettings())
