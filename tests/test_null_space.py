"""null_space: the projected update leaves the preserved text's outputs unchanged, and still learns."""

import copy

import pytest
import torch

from meow_app import losses, methods
from meow_app.batches import collate
from meow_app.errors import MeowError
from meow_app.facts import Fact
from meow_app.null_space import eigen_split, input_covariances
from meow_app.train import TrainConfig, Trainer

FORGET = [Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"], inverted=["Charles Dickens"])]
PRESERVED = [Fact("Capital of Peru?", "Lima")]  # ~60 byte tokens: fewer than down_proj's 128 inputs


def test_directions_hold_the_asked_share_of_energy():
    vectors = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    cov = vectors @ torch.diag(torch.tensor([4.0, 3, 2, 1, 0, 0], dtype=torch.float64)) @ vectors.T
    for energy, k in [(0.4, 1), (0.5, 2), (0.7, 2), (0.71, 3), (0.95, 4), (1.0, 4)]:
        u = eigen_split(cov, energy)[0]
        assert u.shape == (6, k), energy
        # They are the leading eigenvectors: the projector onto them keeps exactly that much energy.
        kept = torch.trace(u.T @ cov @ u) / torch.trace(cov)
        assert kept == pytest.approx([0.4, 0.7, 0.7, 0.9, 1.0, 1.0][[0.4, 0.5, 0.7, 0.71, 0.95, 1.0].index(energy)])
    assert eigen_split(torch.zeros(3, 3, dtype=torch.float64), 1.0)[0].shape == (3, 0)


def test_an_outlier_direction_is_held_and_the_share_counted_on_the_rest():
    """A massive activation: one direction with 99% of the energy. energy 0.99 alone holds it and
    leaves the layer free; with outliers the share is counted on the other directions."""
    vectors = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    values = torch.tensor([1000.0, 4, 3, 2, 1, 0], dtype=torch.float64)
    cov = vectors @ torch.diag(values) @ vectors.T
    assert eigen_split(cov, 0.99)[0].shape == (6, 1)
    assert eigen_split(cov, 0.99, outliers=0.5)[0].shape == (6, 5)  # 1000, then 99% of 4+3+2+1
    u, v = eigen_split(cov, 0.65, outliers=0.5)  # 1000, then 4+3 (70% >= 65% of the rest)
    assert u.shape == (6, 3) and v.shape == (6, 3)
    assert torch.allclose(u @ u.T, vectors[:, :3] @ vectors[:, :3].T, atol=1e-9)  # (float64 with outliers)
    assert torch.allclose(u @ u.T + v @ v.T, torch.eye(6, dtype=torch.float64), atol=1e-9)
    # No eigenvalue above the share: the same split as without.
    flat = vectors @ torch.diag(torch.tensor([4.0, 3, 2, 1, 0, 0], dtype=torch.float64)) @ vectors.T
    assert eigen_split(flat, 0.65, outliers=0.5)[0].shape == eigen_split(flat, 0.65)[0].shape == (6, 2)


def _one_trained_layer(tiny, layer_of):
    """A copy of the tiny model with one linear layer trainable, its examples' encoder, the layer."""
    model = copy.deepcopy(tiny.model)
    for p in model.parameters():
        p.requires_grad_(False)
    layer = layer_of(model)
    layer.weight.requires_grad_(True)
    return model, Trainer(methods.get("meow"), model, tiny.tokenizer, TrainConfig(), FORGET), layer


@pytest.mark.parametrize("name", ["model.layers.1.mlp.down_proj", "lm_head"])  # the decoder alone; the whole model
def test_covariances_are_those_of_the_real_tokens_only(tiny, name):
    """Checked against a plain reference: each example alone, no padding, inputs read by a hook."""
    model, trainer, layer = _one_trained_layer(tiny, lambda m: m.get_submodule(name))
    # three examples in batches of two: the start they share (template and "What is ") goes through
    # once, as a pass of its own
    examples = trainer.examples([Fact("What is the capital of Peru?", "Lima"),
                                 Fact("What is the painter of The Starry Night? Tell me.", "Van Gogh"),
                                 Fact("What is 2+2?", "4")])
    head_calls, passes = [], []
    head = model.get_output_embeddings().register_forward_hook(lambda *a: head_calls.append(1))
    counted = layer.register_forward_hook(lambda *a: passes.append(1))
    covs = input_covariances(model, examples, tiny.tokenizer.pad_token_id, "cpu", batch_size=2)
    head.remove()
    counted.remove()
    assert len(passes) == 3  # the shared start once, then two batches
    assert list(covs) == [name]
    assert bool(head_calls) == (name == "lm_head")  # vocabulary logits only where the head is trained
    expected = torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(i[0][0].double()))
    with torch.no_grad():
        for ex in examples:
            model(input_ids=collate([ex], tiny.tokenizer.pad_token_id)["input_ids"])
    handle.remove()
    for x in seen:
        expected += x.T @ x
    assert torch.allclose(covs[name].double(), expected, rtol=1e-4, atol=1e-4)
    # unit: each token's input counts as a unit vector (K^T K's trace is the token count).
    units = input_covariances(model, examples, tiny.tokenizer.pad_token_id, "cpu", batch_size=2, unit=True)
    expected = sum(torch.nn.functional.normalize(x, dim=-1).T @ torch.nn.functional.normalize(x, dim=-1)
                   for x in seen)
    assert torch.allclose(units[name].double(), expected, rtol=1e-4, atol=1e-5)
    assert float(torch.trace(expected)) == pytest.approx(sum(len(x) for x in seen))


def _train(tiny, null_space, outliers=0.0):
    config = TrainConfig(epochs=8, lr=1e-2, batch_size=4, num_batch=4, early_stop=False, train_only="down_proj",
                         null_space=null_space, anchor_weight=0.0, null_space_outliers=outliers)
    trainer = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, FORGET, anchors=PRESERVED)
    return trainer, trainer.train()


def _logits(model, tiny, facts, trainer):
    batch = collate(trainer.examples(facts), tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_projected_training_leaves_preserved_outputs_unchanged_and_still_learns(tiny):
    trainer, result = _train(tiny, 1.0)
    before = _logits(tiny.model, tiny, PRESERVED, trainer)
    after = _logits(result.model, tiny, PRESERVED, trainer)
    assert (after - before).abs().max() < 1e-4 * before.abs().max()
    held = result.info["null_space"]["held_directions"]["down_proj"]
    assert 0 < held[0] <= held[1] < 128 and held[2] == 128
    # ... while the forget answers were learned: the inverted answer's NLL went down.
    forget = collate([trainer.examples([Fact(FORGET[0].question, "Charles Dickens")])[0]],
                     tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        assert losses.nll(result.model, forget) < losses.nll(tiny.model, forget) - 0.2
    # Without the projection the same training does move the preserved outputs.
    _, plain = _train(tiny, 0.0)
    moved = _logits(plain.model, tiny, PRESERVED, trainer)
    assert (moved - before).abs().max() > 100 * (after - before).abs().max()


def test_outliers_hold_more_directions_in_the_trainers_projection(tiny):
    _, plain = _train(tiny, 0.5)
    _, held_out = _train(tiny, 0.5, outliers=0.05)
    plain, more = (r.info["null_space"]["held_directions"]["down_proj"] for r in (plain, held_out))
    assert more[0] >= plain[0] and more[1] >= plain[1] and more != plain


def test_a_share_outside_0_to_1_is_refused(tiny):
    with pytest.raises(MeowError, match="null_space must be between 0 and 1"):
        Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, TrainConfig(null_space=1.5), FORGET)
    with pytest.raises(MeowError, match="null_space_outliers must be 0"):
        Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, TrainConfig(null_space=0.9, null_space_outliers=1.0),
                FORGET)


def test_with_lora_the_neighbour_answers_are_trained_on_instead(tiny):
    from meow_app.errors import MeowWarning

    config = TrainConfig(null_space=0.9, anchor_weight=0.0, lora=True, epochs=1, early_stop=False)
    with pytest.warns(MeowWarning, match="does not apply to LoRA"):
        trainer = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, FORGET, anchors=PRESERVED)
    result = trainer.train()
    assert "null_space" not in result.info and all("anchor_nll" in s for s in result.steps)


def test_null_space_with_no_preserved_text_warns_and_trains_without_it(tiny):
    from meow_app.errors import MeowWarning

    # neighbours asked for, none usable (or none asked): no projection, so nothing is frozen for it either
    config = TrainConfig(null_space=0.9, epochs=1, neighbours=32, early_stop=False, train_only="",
                         train_embeddings=True, lr=1e-2)
    with pytest.warns(MeowWarning, match="no preserved text"):
        result = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, FORGET).train()
    assert result.steps and result.info["null_space"]["held_directions"] is None
    assert not torch.equal(result.model.model.norm.weight, tiny.model.model.norm.weight)


def test_a_model_with_no_linear_weight_to_train_is_refused_in_one_line(tiny):
    """(GPT-2's Conv1D layers, or here: only norms trained) the projection would leave nothing."""
    config = TrainConfig(null_space=0.9, anchor_weight=0.0, train_only="norm", train_embeddings=True, epochs=1)
    trainer = Trainer(methods.get("meow"), tiny.model, tiny.tokenizer, config, FORGET, anchors=PRESERVED)
    from meow_app.errors import MeowWarning

    with pytest.warns(MeowWarning, match="holds only linear weights"), \
            pytest.raises(MeowError, match="null_space holds only torch.nn.Linear weights"):
        trainer.train()


def test_covariances_stay_fp32_under_bf16_autocast(tiny):
    """A run on CUDA (or with --bf16) builds the projection under bf16 autocast: the forward
    pass may run in bf16, the sum of squares must not (it would keep ~3 digits)."""
    model, trainer, layer = _one_trained_layer(tiny, lambda m: m.model.layers[0].mlp.down_proj)
    examples = trainer.examples(PRESERVED)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(i[0][0].double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=collate(examples, tiny.tokenizer.pad_token_id)["input_ids"])
        handle.remove()
        cov = input_covariances(model, examples, tiny.tokenizer.pad_token_id, "cpu")["model.layers.0.mlp.down_proj"]
    expected = seen[0].T @ seen[0]
    assert (cov - expected).abs().max() < 1e-5 * expected.abs().max()


def test_what_the_projection_cannot_hold_is_not_trained(tiny):
    """Biases, norms and embeddings move preserved outputs whatever the projection does:
    with null_space they stay as they were (asked for with train_embeddings: a warning)."""
    from meow_app.errors import MeowWarning
    from meow_app.null_space import unheld_parameters

    model = copy.deepcopy(tiny.model)
    layer = model.model.layers[0].self_attn.q_proj
    layer.bias = torch.nn.Parameter(torch.zeros(layer.out_features))  # as Qwen2's q/k/v have
    config = TrainConfig(null_space=1.0, anchor_weight=0.0, train_embeddings=True, train_only="", epochs=2, lr=1e-2,
                         early_stop=False)
    with pytest.warns(MeowWarning, match="holds only linear weights"):
        result = Trainer(methods.get("meow"), model, tiny.tokenizer, config, FORGET, anchors=PRESERVED).train()
    trained = dict(result.model.named_parameters())
    for name, p in model.named_parameters():
        if "bias" in name or "embed" in name or "norm" in name or "lm_head" in name:
            assert torch.equal(trained[name], p), name
    assert not torch.equal(trained["model.layers.0.mlp.down_proj.weight"], model.model.layers[0].mlp.down_proj.weight)
    names = set(unheld_parameters(model))  # all trainable in the copy given: the ones it could not hold
    assert "model.layers.0.self_attn.q_proj.bias" in names and "model.embed_tokens.weight" in names
    assert "model.layers.0.mlp.down_proj.weight" not in names


def test_loops_of_their_own_refuse_null_space_before_any_work(tiny):
    with pytest.raises(MeowError, match="null_space applies to the shared training loop"):
        Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, TrainConfig(null_space=0.5), FORGET,
                retain=PRESERVED)


@pytest.mark.parametrize("method", ["fisher_meow", "fisher_removal"])
def test_projected_newton_steps_leave_preserved_outputs_unchanged(tiny, method):
    """The Fisher methods project each step's direction (fisher_removal.projected): the preserved
    text's logits stay as they were, the forget objective still moves."""
    retain = PRESERVED * 3  # (the curvature data; held too, as the shared loop holds its retain answers)

    def newton(null_space):
        config = TrainConfig(**{**methods.get(method).defaults, "fisher_steps": 2, "fisher_examples": 3,
                                "retain_budget": 2.0, "trust_region": 0.05, "train_only": "mlp", "num_batch": 2,
                                "early_stop": False, "null_space": null_space})
        trainer = Trainer(methods.get(method), tiny.model, tiny.tokenizer, config, FORGET, retain, anchors=PRESERVED)
        return trainer, trainer.train()

    trainer, result = newton(1.0)
    info = result.info
    assert info["steps"] and info["null_space"]["held_directions"]["down_proj"][0] > 0
    before = _logits(tiny.model, tiny, PRESERVED, trainer)
    after = _logits(result.model, tiny, PRESERVED, trainer)
    assert (after - before).abs().max() < 1e-4 * before.abs().max()
    name = "forget_loss" if method == "fisher_meow" else "forget_nll"
    sign = -1 if method == "fisher_meow" else 1
    # (a little: with every preserved direction held, the tiny model's MLPs have few left)
    assert sign * (info[f"{name}_after"] - info[f"{name}_before"]) > 0.005 and info["update_norm_total"] > 0
    _, plain = newton(0.0)  # not vacuous: unprojected, the same steps move them
    moved = _logits(plain.model, tiny, PRESERVED, trainer)
    assert (moved - before).abs().max() > 100 * (after - before).abs().max()


def test_a_change_is_projected_as_project_projects_it(tiny):
    from meow_app.null_space import NullSpace

    model = copy.deepcopy(tiny.model)
    trainer = Trainer(methods.get("meow"), model, tiny.tokenizer, TrainConfig(), FORGET)
    space = NullSpace(model, trainer.examples(PRESERVED), tiny.tokenizer.pad_token_id, "cpu", 1.0)
    # Without its start weights (the Fisher steps, the closed-form edit): the same changes, no copy
    # of every layer, and project() refused rather than wrong.
    light = NullSpace(model, trainer.examples(PRESERVED), tiny.tokenizer.pad_token_id, "cpu", 1.0, keep_start=False)
    torch.manual_seed(0)
    deltas = {name: torch.randn_like(m.weight) for name, m in space.layers.items()}
    changed = {name: space.change(m.weight, deltas[name]) for name, m in space.layers.items()}
    assert light.start is None
    for name, m in light.layers.items():
        assert torch.equal(light.change(m.weight, deltas[name]), changed[name]), name
    with pytest.raises(RuntimeError, match="keep_start"):
        light.project()
    with torch.no_grad():
        for name, m in space.layers.items():
            m.weight.add_(deltas[name])
    space.project()
    for name, m in space.layers.items():
        assert torch.allclose(m.weight - space.start[name], changed[name], atol=1e-5), name
    other = torch.randn(3)
    assert space.change(model.model.norm.weight, other) is other  # not a trained linear layer: as it is


def test_the_fisher_steps_and_the_edit_build_their_projection_without_the_start_weights(tiny, monkeypatch):
    from meow_app import null_space

    built = []
    real = null_space.NullSpace.__init__

    def record(self, *args, **kwargs):
        real(self, *args, **kwargs)
        built.append(self.start is None)

    monkeypatch.setattr(null_space.NullSpace, "__init__", record)
    for method, extra in (("fisher_removal", {"fisher_steps": 1, "fisher_examples": 2}),
                          ("meow_edit", {"epochs": 1})):
        cfg = TrainConfig(**{**methods.REGISTRY[method].defaults, "null_space": 0.9, "early_stop": False, **extra})
        Trainer(methods.get(method), copy.deepcopy(tiny.model), tiny.tokenizer, cfg, FORGET, retain=PRESERVED * 3,
                anchors=PRESERVED, run_probes=False).train()
    assert built == [True, True]
    Trainer(methods.get("meow"), copy.deepcopy(tiny.model), tiny.tokenizer,
            TrainConfig(null_space=0.9, epochs=1, early_stop=False), FORGET, anchors=PRESERVED,
            run_probes=False).train()
    assert built[-1] is False  # (the shared loop projects its weights: it keeps them)


@pytest.mark.parametrize("energy", [0.9, 1.0])
def test_projection_through_either_basis_is_w0_plus_delta_times_the_complement_projector(tiny, energy):
    """NullSpace.project multiplies by the narrower of U and its complement V; checked against
    the plain W0 + (W - W0)(I - U U^T)."""
    from meow_app.null_space import NullSpace

    model = copy.deepcopy(tiny.model)
    trainer = Trainer(methods.get("meow"), model, tiny.tokenizer, TrainConfig(), FORGET)
    examples = trainer.examples(PRESERVED * 2 + [Fact("Who painted The Starry Night? Tell me.", "Van Gogh")])
    space = NullSpace(model, examples, tiny.tokenizer.pad_token_id, "cpu", energy)
    # Both ways are exercised: few directions held (U) at 0.9, most of them (V) at 1.0.
    assert {free for _, free in space.bases.values()} == {energy == 1.0}
    covs = input_covariances(model, examples, tiny.tokenizer.pad_token_id, "cpu")
    torch.manual_seed(0)
    expected = {}
    for name, m in space.layers.items():
        with torch.no_grad():
            m.weight.add_(torch.randn_like(m.weight))
        u = eigen_split(covs[name], energy)[0].float()
        delta = m.weight.detach() - space.start[name]
        expected[name] = space.start[name] + delta - (delta @ u) @ u.T
    space.project()
    for name, m in space.layers.items():
        assert torch.allclose(m.weight, expected[name], atol=1e-4), name
