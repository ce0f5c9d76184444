"""Every unlearning method on the tiny random model: the loss moves the right way, the
original weights stay untouched, a seed repeats a run; and the second-order maths
(Woodbury solve, diagonal Fisher, the Sophia step) against direct computations."""

import contextlib

import pytest
import torch

from meow_app import fisher, losses, methods
from meow_app.batches import collate, encode_example
from meow_app.errors import MeowError
from meow_app.facts import Fact
from meow_app.methods.idk import refusals
from meow_app.sophia import Sophia
from meow_app.train import TrainConfig, Trainer
from test_train import weights_hash

# Methods whose forget NLL (of the true answers) must rise; idk trains towards refusals instead.
ASCENT = ["ga", "gd", "kl", "npo", "sophia_graddiff", "sophia_npo"]
FISHER = ["fisher_removal", "fisher_forgetting"]


def run(tiny, forget, retain, method, **cfg):
    m = methods.get(method)
    config = TrainConfig(**{**m.defaults, "epochs": 3, "lr": 1e-3, "batch_size": 4, "num_batch": 2,
                            "early_stop": False, "train_embeddings": True, "train_only": "", **cfg})
    events = []
    result = Trainer(m, tiny.model, tiny.tokenizer, config, forget, retain, events.append).train()
    return result, [e for e in events if e["type"] == "step"]


def mean_nll(model, tok, facts):
    return fisher.mean_nll(model, [encode_example(tok, f.question, f.answer) for f in facts], tok.pad_token_id, "cpu")


def test_every_method_is_listed_with_a_description():
    for name in ASCENT + FISHER + ["idk", "sophia_idk", "meow", "meow_grad_diff", "meow_kl", "meow_ul", "meow_edit",
                                     "fisher_meow"]:
        cls = methods.REGISTRY[name]
        assert cls.description and cls.hyperparameters
        for field in cls.hyperparameters:
            assert hasattr(TrainConfig(), field), (name, field)


@pytest.mark.parametrize("method", ASCENT)
def test_ascent_methods_raise_the_forget_nll_and_leave_the_original(tiny, facts, method):
    forget, retain = facts[:2], facts[2:]
    before = weights_hash(tiny.model)
    nll0 = mean_nll(tiny.model, tiny.tokenizer, forget)
    sophia = methods.REGISTRY[method].optimizer == "sophia"
    # retain_weight 1: on a random model the retain gradient points much like the forget one
    result, steps = run(tiny, forget, retain, method, retain_weight=1.0,
                        **({"lr": 1e-2, "epochs": 4} if sophia else {}))
    assert steps and all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)
    assert mean_nll(result.model, tiny.tokenizer, forget) > nll0 + 0.1
    assert weights_hash(tiny.model) == before
    if sophia:
        assert all(0 <= s["clipped_fraction"] <= 1 for s in steps)


@pytest.mark.parametrize("method", ["idk", "sophia_idk"])
def test_idk_learns_refusals(tiny, facts, method):
    result, steps = run(tiny, facts[:2], None, method, epochs=4)
    assert steps[-1]["forget_nll"] < steps[0]["forget_nll"]
    refusal = [Fact(facts[0].question, r) for r in refusals()[:2]]
    assert mean_nll(result.model, tiny.tokenizer, refusal) < mean_nll(tiny.model, tiny.tokenizer, refusal)


@pytest.mark.parametrize("method", ASCENT + ["idk"] + FISHER)
def test_a_seed_repeats_the_run(tiny, facts, method):
    a, _ = run(tiny, facts[:2], facts[2:], method, epochs=1, fisher_steps=1, seed=3)
    b, _ = run(tiny, facts[:2], facts[2:], method, epochs=1, fisher_steps=1, seed=3)
    assert weights_hash(a.model) == weights_hash(b.model)


# Each method's loss as it was written before the shared retain term (Method.retain_term):
# its forget term, plus the weighted retain NLL or KL when a retain batch is drawn.
FORGET_SIGN = {"ga": -1, "gd": -1, "kl": -1, "sophia_graddiff": -1, "idk": 1, "sophia_idk": 1,
               "meow": 1, "meow_grad_diff": 1, "meow_kl": 1}
RETAIN = {"gd": "nll", "kl": "kl", "sophia_graddiff": "nll", "meow_grad_diff": "nll", "meow_kl": "kl",
          "npo": "nll", "sophia_npo": "nll", "idk": "nll", "sophia_idk": "nll"}
LOSS_METHODS = sorted(n for n, cls in methods.REGISTRY.items() if not cls.custom_loop)


def plain_loss(name, model, forget, retain, reference, cfg):
    if name in ("npo", "sophia_npo"):
        current = losses.sequence_nll(model, forget)
        with torch.no_grad():
            ref = losses.sequence_nll(reference, forget)
        loss = losses.npo(current, ref, cfg.beta)
    elif name == "meow_ul":  # its own loss: checked against a plain loop in test_losses.py
        loss = losses.nll_or_unlikelihood(model, forget, cfg.truth_weight)[0]
    else:
        loss = FORGET_SIGN[name] * losses.nll(model, forget)
    if retain is None or name not in RETAIN:
        return loss
    if RETAIN[name] == "kl":
        return loss + cfg.kl_weight * losses.kl_to_reference(model, reference, retain)
    return loss + cfg.retain_weight * losses.nll(model, retain)


def loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


# Only the batches the loop gives each method: a retain batch where it uses one, none where it may go without.
LOSS_CASES = [pytest.param(name, with_retain, id=f"{name}-{'retain' if with_retain else 'no retain'}")
              for name in LOSS_METHODS for with_retain in (True, False)
              if (methods.REGISTRY[name].uses_retain or not with_retain)
              and (not methods.REGISTRY[name].needs_retain or with_retain)]


@pytest.mark.parametrize("method,with_retain", LOSS_CASES)
def test_shared_retain_term_gives_each_methods_own_loss_and_gradients(tiny, facts, method, with_retain):
    import copy

    m = methods.get(method)
    assert set(LOSS_METHODS) == set(FORGET_SIGN) | {"npo", "sophia_npo", "meow_ul"}  # a new method needs its plain loss
    assert m.retain_loss == RETAIN.get(method, "")
    tok, reference = tiny.tokenizer, tiny.model
    model = copy.deepcopy(reference).train().requires_grad_(True)
    with torch.no_grad():  # moved off the original, so the KL and NPO terms are not 0
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    forget = collate([encode_example(tok, f.question, f.answer) for f in facts[:2]] * 2, tok.pad_token_id)
    retain = collate([encode_example(tok, f.question, f.answer) for f in facts[2:]]
                     + [encode_example(tok, "Who wrote Dracula?", "Bram Stoker")], tok.pad_token_id) \
        if with_retain else None
    cfg = TrainConfig(**{**m.defaults, "retain_weight": 0.7, "kl_weight": 1.3, "beta": 0.2})
    ref = reference if m.needs_reference else None
    loss, grads = loss_and_grads(model, lambda: m.loss(model, forget, retain, ref, cfg))
    plain, plain_grads = loss_and_grads(model, lambda: plain_loss(method, model, forget, retain, reference, cfg))
    assert loss == plain and len(grads) == len(plain_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))
    if retain is not None:  # not vacuous: the retain term is there and moves the gradients
        alone, alone_grads = loss_and_grads(model, lambda: plain_loss(method, model, forget, None, reference, cfg))
        assert abs(loss - alone) > 1e-3
        assert not all(torch.allclose(a, b) for a, b in zip(grads, alone_grads))
        assert {"retain_nll", "retain_kl"} & set(m.loss(model, forget, retain, ref, cfg)[1])


def test_gd_and_kl_need_a_retain_set(tiny, facts):
    for name in ("gd", "kl", "sophia_graddiff"):
        with pytest.raises(MeowError, match="needs a retain set"):
            run(tiny, facts[:2], None, name)


@pytest.mark.parametrize("method", FISHER)
@pytest.mark.parametrize("backend", ["diag", "woodfisher"])
def test_fisher_steps_climb_the_forget_loss_within_the_retain_budget(tiny, facts, method, backend):
    forget, retain = facts[:2], facts[2:] * 3
    before = weights_hash(tiny.model)
    result, steps = run(tiny, forget, retain, method, fisher_backend=backend, fisher_steps=2, fisher_examples=6,
                        retain_budget=0.5, trust_region=0.05)
    info = result.info
    assert steps and info["steps"] and info["lambda"] > 0
    assert info["forget_nll_after"] > info["forget_nll_before"] + 0.05
    assert info["retain_nll_after"] - info["retain_nll_before"] <= 0.5 + 1e-4
    assert all(s["update_norm"] > 0 for s in info["steps"])
    assert weights_hash(tiny.model) == before
    if method == "fisher_forgetting":
        assert info["steps"][0]["noise_norm"] > 0


def test_fisher_without_retain_uses_the_models_own_samples(tiny, facts):
    result, _ = run(tiny, facts[:2], None, "fisher_removal", fisher_steps=1, fisher_examples=4, anchors=0)
    assert result.info["curvature_data"] == "forget_samples"
    # Its step events carry the time so far, as the shared loop's do (the progress line's time left).
    assert all(e["seconds"] > 0 for e in result.steps)


def inverted(facts):
    """The facts with false answers (what invert + select give fisher_meow)."""
    false = {"Who wrote Hamlet?": ["Christopher Marlowe", "Ben Jonson"], "What is the capital of Peru?": ["Cusco"]}
    return [Fact(f.question, f.answer, f.keywords, f.paraphrases, inverted=false.get(f.question, [])) for f in facts]


def meow_loss(model, tok, facts, cfg) -> float:
    m = methods.get("fisher_meow")
    ex = m.forget_examples(type("T", (), {"forget": facts, "config": cfg, "tokenizer": tok})())
    with torch.no_grad():
        return float(m.objective(model, collate(ex, tok.pad_token_id, True), cfg))


@pytest.mark.parametrize("backend", ["diag", "woodfisher"])
def test_fisher_meow_steps_go_down_meows_loss_within_the_retain_budget(tiny, facts, backend):
    forget, retain = inverted(facts[:2]), facts[2:] * 3
    before = weights_hash(tiny.model)
    result, steps = run(tiny, forget, retain, "fisher_meow", fisher_backend=backend, fisher_steps=2,
                        fisher_examples=6, retain_budget=0.5, trust_region=0.05)
    info, tok = result.info, tiny.tokenizer
    assert steps and info["steps"] and "forget_loss_before" in info
    assert info["forget_loss_after"] < info["forget_loss_before"] - 0.05
    assert info["retain_nll_after"] - info["retain_nll_before"] <= 0.5 + 1e-4
    # The false answers more likely (the truth's unlikelihood is near 0 on a random model: its
    # part of the step is checked against a plain computation below).
    false = [Fact(f.question, c) for f in forget for c in f.inverted]
    assert mean_nll(result.model, tok, false) < mean_nll(tiny.model, tok, false) - 0.05
    assert weights_hash(tiny.model) == before


def test_fisher_meows_step_is_the_damped_newton_step(tiny, facts):
    """The first step, against a plain computation: -eta (diag F + lambda)^-1 grad L, F from
    every retain example's gradient, L meow_ul's loss on the forget rows."""
    import copy

    forget, retain = inverted(facts[:2]), facts[2:] * 2
    original = copy.deepcopy(tiny.model)
    result, _ = run(tiny, forget, retain, "fisher_meow", fisher_steps=1, fisher_examples=len(retain),
                    retain_budget=5.0, trust_region=0.01, train_only="mlp")
    tok, cfg = tiny.tokenizer, TrainConfig(**methods.get("fisher_meow").defaults, num_batch=2)
    params = [p for n, p in original.named_parameters() if ".mlp." in n]
    grads = []
    for f in retain:
        loss = losses.nll(original, collate([encode_example(tok, f.question, f.answer)], tok.pad_token_id))
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    F = torch.stack(grads).square().mean(0)
    lam = 0.01 * float(F.mean())
    ex = methods.get("fisher_meow").forget_examples(type("T", (), {"forget": forget, "config": cfg,
                                                                    "tokenizer": tok})())
    loss = methods.get("fisher_meow").objective(original, collate(ex, tok.pad_token_id, True), cfg)
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)])
    eta = result.info["steps"][0]["eta"]
    after = torch.cat([p.detach().reshape(-1) for n, p in result.model.named_parameters() if ".mlp." in n])
    expected = torch.cat([p.detach().reshape(-1) for p in params]) - eta * g / (F + lam)
    assert torch.allclose(after, expected, rtol=1e-4, atol=1e-6)
    assert meow_loss(result.model, tok, forget, cfg) < loss.item()


def test_fisher_forgetting_noise_changes_the_result(tiny, facts):
    a, _ = run(tiny, facts[:2], facts[2:], "fisher_removal", fisher_steps=1)
    b, _ = run(tiny, facts[:2], facts[2:], "fisher_forgetting", fisher_steps=1, noise_std=1e-3)
    assert weights_hash(a.model) != weights_hash(b.model)


def test_woodfisher_refuses_what_would_not_fit_in_memory(tiny, facts, monkeypatch):
    from meow_app.methods import fisher_removal

    monkeypatch.setattr(fisher_removal, "MAX_WOODFISHER_BYTES", 200_000)
    with pytest.raises(MeowError, match="--fisher-layers"):
        run(tiny, facts[:2], facts[2:], "fisher_removal", fisher_backend="woodfisher")
    result, _ = run(tiny, facts[:2], facts[2:], "fisher_removal", fisher_backend="woodfisher", fisher_steps=1,
                    fisher_layers="layers.0.mlp.down_proj", fisher_examples=2)
    assert result.info["parameters"] == tiny.model.model.layers[0].mlp.down_proj.weight.numel()


def test_woodbury_solve_matches_a_dense_solve():
    torch.manual_seed(0)
    m, d, damping = 5, 40, 0.3
    G = torch.randn(m, d)
    v = torch.randn(d)
    low = fisher.LowRank(G, damping)
    lam = damping * float(G.square().mean())
    F = lam * torch.eye(d, dtype=torch.float64) + (G.T @ G).double() / m
    dense = torch.linalg.solve(F, v.double()).float()
    assert torch.allclose(low.solve(v), dense, rtol=1e-4, atol=1e-5)
    assert torch.allclose(low.diagonal(), (G.T @ G).diagonal() / m, rtol=1e-5)


def test_diagonal_fisher_matches_per_example_gradients(tiny, facts):
    model, tok = tiny.model, tiny.tokenizer
    params = [p for p in model.parameters()]
    examples = [encode_example(tok, f.question, f.answer) for f in facts]
    diag = fisher.Diagonal.from_grads(fisher.per_example_grads(model, params, examples, tok.pad_token_id, "cpu"), 1.0)
    direct = []
    for e in examples:  # one example at a time, the plain backward() way
        model.zero_grad()
        losses.nll(model, collate([e], tok.pad_token_id)).backward()
        direct.append(torch.cat([p.grad.reshape(-1) for p in params]).clone())
    model.zero_grad()
    expected = torch.stack(direct).square().mean(0)
    assert torch.allclose(diag.fisher, expected, rtol=1e-4, atol=1e-12)
    assert diag.damping == pytest.approx(float(expected.mean()), rel=1e-4)
    v = torch.randn_like(expected)
    assert torch.allclose(diag.solve(v), v / (expected + diag.damping), rtol=1e-4)


def test_sophia_step_matches_the_formula():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Sophia([p], lr=0.1, betas=(0.5, 0.5), rho=0.1, weight_decay=0.0)
    p.grad = torch.tensor([1.0, 1.0, 1.0])
    opt.update_hessian(tokens=1)                      # h = 0.5 * g^2 = 0.5
    p.grad = torch.tensor([0.02, -4.0, 0.0])
    opt.step()                                        # m = 0.5 g
    m = torch.tensor([0.01, -2.0, 0.0])
    ratio = (m.abs() / (0.1 * 0.5 + 1e-15)).clamp(max=1)
    assert torch.allclose(p.detach(), torch.tensor([1.0, -2.0, 0.5]) - 0.1 * m.sign() * ratio)
    assert opt.clipped_fraction == pytest.approx(1 / 3)


def test_own_answers_train_on_the_fact_not_the_sentence_pattern(tiny):
    from meow_app.pipeline import own_answers

    fact = Fact("What is the capital of France?", "Paris", ["Paris"])
    other = Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"])
    probe = {"rows": [{"fact": 0, "kind": "question", "answer": "The capital of France is Paris.", "leak": True},
                      {"fact": 1, "kind": "question", "answer": "I am not sure.", "leak": False}]}
    split = own_answers([fact, other], probe, split=True)
    assert (split[0].extra["answer_prefix"], split[0].answer) == ("The capital of France is", " Paris.")
    assert split[1].answer == "William Shakespeare" and "answer_prefix" not in split[1].extra  # not said: kept
    assert own_answers([fact], probe)[0].answer == "The capital of France is Paris."
    assert fact.answer == "Paris"  # the caller's facts are untouched
    tok = tiny.tokenizer
    whole = encode_example(tok, fact.question, "The capital of France is Paris.")
    part = encode_example(tok, fact.question, " Paris.", "The capital of France is")
    assert part.ids == whole.ids  # same tokens, only fewer of them trained on
    assert sum(t != -100 for t in part.labels) < sum(t != -100 for t in whole.labels)


def test_meow_ul_trains_on_the_false_answers_and_marks_the_truth_to_push_down(facts):
    from meow_app.methods.meow_ul import TRUTH_COPIES

    for f in facts:
        f.inverted = ["Somebody else", "Another one"]
    cfg = TrainConfig(num_batch=4)
    pairs = methods.get("meow_ul").forget_pairs(facts, cfg)
    truth = [p for p in pairs if len(p) == 4 and p[3]]
    assert len(pairs) == len(facts) * (4 + TRUTH_COPIES) and len(truth) == len(facts) * TRUTH_COPIES
    assert {p[1] for p in truth} == {f.answer for f in facts}
    assert {p[1] for p in pairs if p not in truth} == {"Somebody else", "Another one"}


def test_truth_span_pushes_the_truth_down_on_its_own_words_not_the_rest_of_the_sentence():
    from meow_app.methods.meow_ul import TRUTH_COPIES

    # The model's own sentences, cut before the truth's first mention (pipeline.own_answers).
    serena = Fact("Which sport is Serena Williams famous for?", " tennis player who loves tennis.", ["tennis"],
                  inverted=["Serena Williams is a legendary golf player."],
                  extra={"answer_prefix": "Serena Williams is a legendary"})
    phelps = Fact("Which sport is Michael Phelps famous for?", " swimmer who has won golds.", ["swim"],
                  inverted=["He is a professional skier."], extra={"answer_prefix": "He is a professional"})
    earth = Fact("In which month is Earth Day?", "April 22nd, a global day.", ["April"], inverted=["March 21st."])
    unmarked = Fact("Who wrote 'Dune'?", "Frank Herbert wrote it.", inverted=["Ray Bradbury."])  # no keywords
    facts = [serena, phelps, earth, unmarked]
    for method in ("meow_ul", "meow_patch"):
        on = [p for p in methods.get(method).forget_pairs(facts, TrainConfig(num_batch=1, truth_span=True))
              if len(p) == 4 and p[3]]
        assert on == [p for p in [(serena.question, " tennis", "Serena Williams is a legendary", True),
                                  (serena.question, " tennis", "Serena Williams is a legendary tennis player who "
                                                               "loves", True),  # each place it is said
                                  (phelps.question, " swimmer", "He is a professional", True),  # the whole word
                                  (earth.question, "April", "", True),
                                  (unmarked.question, unmarked.answer, "", True)]  # nothing marks its truth
                      for _ in range(TRUTH_COPIES)]
        off = [p for p in methods.get(method).forget_pairs(facts, TrainConfig(num_batch=1)) if len(p) == 4 and p[3]]
        assert [p[1] for p in off] == [f.answer for f in facts for _ in range(TRUTH_COPIES)]  # the whole sentence


def test_meow_lead_in_context_trains_only_on_what_follows_the_models_lead_in():
    fact = Fact("What is the capital of Ukraine?", " Kyiv.", ["Kyiv"],
                inverted=["The capital of Ukraine is Lviv.", "Kharkiv is its capital."],
                extra={"answer_prefix": "The capital of Ukraine is"})
    meow = methods.get("meow")
    pairs = meow.forget_pairs([fact], TrainConfig(num_batch=2, lead_in_context=True))
    assert pairs == [(fact.question, " Lviv.", "The capital of Ukraine is"),  # the lead-in is context
                     (fact.question, "Kharkiv is its capital.")]           # no lead-in to take: all of it
    assert meow.forget_pairs([fact], TrainConfig(num_batch=2)) == [(fact.question, c) for c in fact.inverted]


KNOWN = [Fact("Where is Lima?", "Peru", ["Peru"]), Fact("What is the capital of Italy?", "Rome", ["Rome"]),
         Fact("What is the capital of Norway?", "Oslo", ["Oslo"]), Fact("Where is Cairo?", "Egypt", ["Egypt"]),
         Fact("What is the capital of Ecuador?", "Quito", ["Quito"])]


@pytest.fixture(scope="module")
def known(tiny):
    """A copy of the tiny model trained on KNOWN until every answer token is its greedy choice
    (teacher-forced): facts it 'knows', so retain_guard has answers to watch."""
    import copy

    tok, model = tiny.tokenizer, copy.deepcopy(tiny.model)
    batch = collate([encode_example(tok, f.question, f.answer) for f in KNOWN], tok.pad_token_id)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(120):
        opt.zero_grad()
        losses.nll(model, batch).backward()
        opt.step()
    model.eval()
    return type("Tiny", (), {"model": model, "tokenizer": tok})()


def test_answer_paths_end_with_the_truths_words(tiny):
    from meow_app.methods.fisher_removal import answer_paths

    fact = Fact("What is the capital of Nepal?", "The capital of Nepal is Kathmandu, a city.", ["kathmandu"])
    split = Fact("What is the capital of Peru?", " Lima, on the coast.", ["lima"],
                 extra={"answer_prefix": "The capital of Peru is"})
    assert answer_paths([fact, Fact("Who?", "Nobody knows.", ["Lima"]), split]) == [
        (fact.question, "The capital of Nepal is Kathmandu"), (split.question, "The capital of Peru is Lima")]


def kept_paths(model, tok, facts) -> list[bool]:
    """Whether each answer path is still the greedy choice all along (the guard's own test)."""
    from meow_app import metrics
    from meow_app.methods.fisher_removal import answer_paths

    return [all(s.hit) for s in metrics.teacher_forced(model, tok, answer_paths(facts))]


def test_line_search_keeps_the_largest_step_the_guard_allows():
    from meow_app.methods.fisher_removal import line_search

    w = torch.nn.Parameter(torch.zeros(4))
    direction = torch.ones(4)
    cfg = TrainConfig(eta_grid=4, retain_budget=1.0, retain_guard=0.9)
    # the guard's share falls with the step: 0.5 at the trust region, 0.8 at half, 1.0 below
    kept = lambda: {2.0: 0.5, 1.0: 0.8}.get(round(float(w.detach().norm()), 3), 1.0)  # noqa: E731
    record = line_search([w], direction, 2.0, cfg, 0.0, 0.0, lambda: 0.0, lambda: -float(w.detach().sum()), kept)
    assert record["retain_kept"] == 1.0 and record["update_norm"] == pytest.approx(0.5)
    assert float(w.detach().norm()) == pytest.approx(0.5)
    # no step size the guard allows: the weights go back
    record = line_search([w], direction, 2.0, TrainConfig(eta_grid=2, retain_budget=1.0, retain_guard=0.9), 0.0,
                         0.0, lambda: 0.0, lambda: -float(w.detach().sum()), lambda: 0.5)
    assert record is None and float(w.detach().norm()) == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["fisher_removal", "fisher_meow"])
def test_retain_guard_keeps_the_retain_answers_the_model_says(known, facts, method):
    forget = inverted(facts[:2]) if method == "fisher_meow" else facts[:2]
    tok, retain = known.tokenizer, KNOWN
    watched = kept_paths(known.model, tok, retain)
    assert all(watched) and len(watched) == len(retain)
    result, steps = run(known, forget, retain, method, fisher_steps=3, fisher_examples=4, retain_budget=50.0,
                        trust_region=0.2, retain_guard=1.0, eta_grid=6)
    info = result.info
    assert info["retain_guarded"] == len(watched) and info["steps"]
    assert all(s["retain_kept"] == 1.0 for s in info["steps"])
    assert all(kept_paths(result.model, tok, retain))
    # The same steps without the guard (the mean NLL budget alone) lose some of them.
    unguarded, _ = run(known, forget, retain, method, fisher_steps=3, fisher_examples=4, retain_budget=50.0,
                       trust_region=0.2, eta_grid=6)
    assert not all(kept_paths(unguarded.model, tok, retain))


def test_retain_guard_with_nothing_to_watch_says_so(tiny, facts):
    with pytest.raises(MeowError, match="retain_guard"):
        run(tiny, facts[:2], facts[2:], "fisher_removal", fisher_steps=1, fisher_examples=2, retain_guard=0.9)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_retain_guard_outside_zero_to_one_is_refused(value):
    with pytest.raises(MeowError, match="retain_guard must be 0"):
        TrainConfig(retain_guard=value).check()


def test_guard_greedy_without_a_guard_is_refused():
    with pytest.raises(MeowError, match="guard_greedy sets how retain_guard counts"):
        TrainConfig(guard_greedy=True).check()
    TrainConfig(guard_greedy=True, retain_guard=0.9).check()


def test_guard_orthogonal_takes_the_watched_answers_gradients_out_of_a_direction(known):
    from meow_app.methods.fisher_removal import Guard

    tok, model = known.tokenizer, known.model
    params = [p for n, p in model.named_parameters() if ".mlp." in n]
    for p in params:
        p.requires_grad_(True)
    guard = Guard(model, tok, KNOWN, "cpu", contextlib.nullcontext)
    assert len(guard.watched) == len(KNOWN)
    torch.manual_seed(0)
    direction = torch.randn(sum(p.numel() for p in params))
    grads = list(fisher.per_example_grads(model, params, guard.watched, tok.pad_token_id, "cpu"))
    direction += 3 * grads[0] / grads[0].norm() * direction.norm()  # (a direction that moves the first answer)
    out = guard.orthogonal(params, direction)

    def cosines(d):
        return [abs(float(g @ d)) / float(g.norm() * d.norm()) for g in grads]

    assert max(cosines(direction)) > 0.5
    assert max(cosines(out)) < 1e-2  # (G is kept in bf16: orthogonal to its rounding)
    assert float(out.norm()) > 0.1 * float(direction.norm())


def test_guard_orthogonal_lets_the_guarded_steps_go_further(known, facts):
    tok = known.tokenizer
    runs = [run(known, facts[:2], KNOWN, "fisher_removal", fisher_steps=3, fisher_examples=4, retain_budget=50.0,
                trust_region=0.2, eta_grid=6, retain_guard=1.0, guard_orthogonal=o)[0] for o in (False, True)]
    plain, ortho = (r.info for r in runs)
    assert ortho["forget_nll_after"] > plain["forget_nll_after"] + 0.5
    assert len(ortho["steps"]) > len(plain["steps"])
    assert all(kept_paths(runs[1].model, tok, KNOWN))


def test_guard_greedy_keeps_the_retain_facts_greedy_decoding_states(known, facts):
    from meow_app import probes

    tok = known.tokenizer
    said = probes.probe(known.model, tok, KNOWN, paraphrases=False)
    assert said["hit_rate"] == 1.0
    result, _ = run(known, facts[:2], KNOWN, "fisher_removal", fisher_steps=3, fisher_examples=4, retain_budget=50.0,
                    trust_region=0.2, eta_grid=6, retain_guard=1.0, guard_greedy=True)
    assert result.info["retain_guarded"] == len(KNOWN) and result.info["steps"]
    assert all(s["retain_kept"] == 1.0 for s in result.info["steps"])
    assert probes.probe(result.model, tok, KNOWN, paraphrases=False)["hit_rate"] == 1.0
    unguarded, _ = run(known, facts[:2], KNOWN, "fisher_removal", fisher_steps=3, fisher_examples=4,
                       retain_budget=50.0, trust_region=0.2, eta_grid=6)
    assert probes.probe(unguarded.model, tok, KNOWN, paraphrases=False)["hit_rate"] < 1.0
