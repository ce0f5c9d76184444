"""Batched decoding (generation._decode) gives each row what `model.generate` gives it alone."""

import pytest
import torch

from meow_app import generation
from meow_app.errors import MeowError
from tiny import sharp_tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_and_tok():
    tok = tiny_tokenizer()
    return sharp_tiny_model(tok), tok


QUESTIONS = ["Who wrote Hamlet?", "What is the capital of Peru?", "Name a planet.",
             "Who painted The Starry Night, and when?", "2+2?"]


def greedy(model, prompts, limits, eos, pad_id, device):
    """One batch through generation._decode, choosing the argmax."""
    return generation._decode(model, prompts, limits, eos, pad_id, device, generation._sampler(None, False, 1.0, 1.0))


def alone(model, prompt, limit, eos):
    """The reference: one prompt, no padding, `model.generate`, cut at the first EOS."""
    gen = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=limit, do_sample=False, eos_token_id=sorted(eos), pad_token_id=0,
                         temperature=None, top_p=None, top_k=None)[0, len(prompt):].tolist()
    out = []
    for t in gen:
        if t in eos:
            break
        out.append(t)
    return out


@pytest.mark.parametrize("system", ["You are a careful assistant. Answer briefly.", None])
def test_greedy_batch_matches_each_prompt_alone(model_and_tok, system):
    model, tok = model_and_tok
    prompts = [generation.encode(tok, generation.chat_prompt(tok, q, system)) for q in QUESTIONS]
    limits = [12, 5, 0, 20, 1]
    eos = {tok.eos_token_id}
    # With a system prompt the rows share a long start (encoded once); without, only the
    # template's few tokens, below the threshold for sharing.
    assert (generation.shared_start(prompts) >= generation.MIN_SHARED) == (system is not None)
    got = greedy(model, prompts, limits, eos, tok.pad_token_id, "cpu")
    want = [alone(model, p, n, eos) if n else [] for p, n in zip(prompts, limits)]
    assert got == want
    assert [len(g) for g in got] == limits  # a random model does not stop by itself here


def test_rows_stop_at_eos_and_leave_the_batch(model_and_tok):
    model, tok = model_and_tok
    prompts = [generation.encode(tok, generation.chat_prompt(tok, q, "Be brief.")) for q in QUESTIONS]
    free = greedy(model, prompts, [16] * len(prompts), set(), tok.pad_token_id, "cpu")
    # Declare a token the first row produces mid-way an end of sequence: that row must stop
    # right before it, the others wherever the same token (if ever) appears in theirs.
    stop = free[0][6]
    got = greedy(model, prompts, [16] * len(prompts), {stop}, tok.pad_token_id, "cpu")
    assert got[0] == free[0][:free[0].index(stop)]
    for g, f in zip(got, free):
        assert g == (f[:f.index(stop)] if stop in f else f)
    assert got == [alone(model, p, 16, {stop}) for p in prompts]


def test_generate_ids_with_banned_tokens_equals_hf_generate_in_batches(model_and_tok):
    """The public entry point, greedy with tokens banned per row, against `model.generate`
    with the same ban as a logits processor (generation._sampled): identical, in the
    caller's order, across batches."""
    model, tok = model_and_tok
    prompts = [generation.encode(tok, generation.chat_prompt(tok, q)) for q in QUESTIONS * 3]
    limits = [3 + (7 * i) % 11 for i in range(len(prompts))]
    free = generation.generate_ids(model, tok, prompts, limits, batch_size=4)
    banned = [sorted(set(f[:2])) for f in free]  # what each row would say first: it must swerve
    fast = generation.generate_ids(model, tok, prompts, limits, batch_size=4, banned=banned)
    eos = set(generation.eos_ids(model, tok))
    slow = [generation._sampled(model, [p], [n], eos, tok.pad_token_id, "cpu", [b], False, 1.0, 1.0)[0]
            for p, n, b in zip(prompts, limits, banned)]
    assert fast == slow and fast != free
    assert [len(f) for f in fast] == limits and not any(set(f) & set(b) for f, b in zip(fast, banned))


def test_sampling_draws_from_the_models_distribution_minus_the_banned_tokens(model_and_tok, monkeypatch):
    """Copies of one prompt are encoded once; their first tokens are drawn as the model's
    softmax says (top_p 1), never a banned one; a tiny top_p leaves only the argmax."""
    model, tok = model_and_tok
    prompt = generation.encode(tok, generation.chat_prompt(tok, "Name a planet.", "Be brief."))
    with torch.no_grad():
        probs = model(input_ids=torch.tensor([prompt])).logits[0, -1].softmax(-1)
    top = probs.argsort(descending=True)[:3].tolist()
    widths = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: widths.append(k["input_ids"].shape) or forward(*a, **k))
    n = 3000
    got = generation.generate_ids(model, tok, [prompt] * n, 1, batch_size=n, do_sample=True, generator_seed=0,
                                  banned=[[top[0]]] * n)
    assert widths[1][0] == 1  # (after the shared start) the prompt's own part once, for 3000 rows
    firsts = torch.tensor([g[0] if g else -1 for g in got])  # (an end of turn drawn first: nothing)
    assert not (firsts == top[0]).any()
    allowed = probs.clone()
    allowed[top[0]] = 0
    allowed /= allowed.sum()
    for t in top[1:]:
        share, p = (firsts == t).float().mean().item(), allowed[t].item()
        assert abs(share - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-3, (t, share, p)
    tiny_p = generation.generate_ids(model, tok, [prompt] * 8, 6, do_sample=True, top_p=1e-6, generator_seed=1)
    assert tiny_p == [generation.generate_ids(model, tok, [prompt], 6)[0]] * 8


def test_generation_config_settings_are_honoured(model_and_tok):
    """A model whose generation_config changes greedy decoding (a repetition penalty here)
    gets exactly what `generate` gives it, not plain argmax."""
    model, tok = model_and_tok
    prompts = [generation.encode(tok, generation.chat_prompt(tok, q, "Be brief.")) for q in QUESTIONS]
    plain = generation.generate_ids(model, tok, prompts, 24, batch_size=8)
    model.generation_config.repetition_penalty = 5.0
    try:
        penalised = generation.generate_ids(model, tok, prompts, 24, batch_size=8)
        assert penalised == [alone(model, p, 24, {tok.eos_token_id}) for p in prompts]
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert penalised != plain  # the penalty does change these answers


def test_sliding_window_models_are_only_left_padded(model_and_tok, monkeypatch):
    """Padding between a shared start and a row's own tokens would eat into a sliding
    window (it counts cache positions), so such models skip the shared start."""
    model, tok = model_and_tok
    assert generation.full_attention(model.config)
    monkeypatch.setattr(model.config, "sliding_window", 16, raising=False)
    assert not generation.full_attention(model.config)
    prompts = [generation.encode(tok, generation.chat_prompt(tok, q, "Be brief.")) for q in QUESTIONS]
    called = []
    monkeypatch.setattr(generation, "shared_start", lambda rows: called.append(rows) or 0)
    generation.generate_ids(model, tok, prompts, 4)
    assert not called


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.9), (1.3, 0.5), (0.5, 0.05)])
def test_sampling_scores_are_transformers_temperature_then_top_p(temperature, top_p):
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    want = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_p < 1.0:
        want = TopPLogitsWarper(top_p)(None, want)
    got = generation.warp(logits.clone(), temperature, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.allclose(got[~torch.isinf(got)], want[~torch.isinf(want)])


def test_models_asking_for_other_sampling_filters_sample_through_generate(model_and_tok, monkeypatch):
    model, tok = model_and_tok
    prompt = generation.encode(tok, generation.chat_prompt(tok, "Name a planet."))
    called = []
    real = generation._sampled
    monkeypatch.setattr(generation, "_sampled", lambda *a: called.append(1) or real(*a))
    generation.generate_ids(model, tok, [prompt] * 2, 3, do_sample=True, generator_seed=0)
    assert not called
    monkeypatch.setattr(model.generation_config, "min_p", 0.1, raising=False)
    generation.generate_ids(model, tok, [prompt] * 2, 3, do_sample=True, generator_seed=0)
    assert called


def test_a_stopped_row_ends_where_asked_and_the_others_run_on(model_and_tok):
    model, tok = model_and_tok
    prompts = [generation.encode(tok, generation.chat_prompt(tok, q, "Be brief.")) for q in QUESTIONS]
    free = generation.generate_ids(model, tok, prompts, 16)
    seen = []

    def stop(i, ids):  # prompt 1 ends after its 5th token; the others are only watched
        seen.append(i)
        return i == 1 and len(ids) == 5

    got = generation.generate_ids(model, tok, prompts, 16, stop=stop)
    assert got[1] == free[1][:5] and all(g == f for k, (g, f) in enumerate(zip(got, free)) if k != 1)
    assert set(seen) == set(range(len(prompts)))  # asked with each prompt's own index


def test_an_answer_is_asked_whether_it_is_done_only_at_a_sentence_end(model_and_tok, monkeypatch):
    model, tok = model_and_tok
    full = generation.answer(model, tok, QUESTIONS[:2], 16)
    asked = []
    # Treat a character the first answer writes mid-way as a sentence end.
    mark = full[0][len(full[0]) // 2]
    monkeypatch.setattr(generation, "SENTENCE_ENDS", mark)
    got = generation.answer(model, tok, QUESTIONS[:2], 16, done=lambda i, text: asked.append((i, text)) or i == 0)
    assert asked and all(mark in text for _, text in asked)
    assert full[0].startswith(got[0]) and mark in got[0] and len(got[0]) < len(full[0])
    assert got[1] == full[1]


def test_batches_are_cut_to_fit_the_kv_budget_but_never_below_32_rows(model_and_tok):
    from types import SimpleNamespace

    def fake(dtype, **config):  # only what rows_that_fit reads
        return SimpleNamespace(config=SimpleNamespace(**config), parameters=lambda: iter([torch.zeros(1, dtype=dtype)]))

    # A 7B Llama's cache in bf16 is 0.5 MiB a token: 100-token rows fit 20 in a GiB (32, the floor)...
    llama7b = fake(torch.bfloat16, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                   hidden_size=4096)
    assert generation.rows_that_fit(llama7b, 128, 100) == 32
    assert generation.rows_that_fit(llama7b, 128, 20) == 102  # (1 GiB / (20 x 0.5 MiB))
    assert generation.rows_that_fit(llama7b, 16, 100) == 16  # never more than asked
    # ...the embedded model's (46 KB a token in fp32) keeps all 128 rows of a probe
    smol = fake(torch.float32, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
    assert generation.rows_that_fit(smol, generation.ANSWER_BATCH, 40 + 48) == 128
    assert generation.rows_that_fit(fake(torch.float32), 128, 100) == 32  # a config it cannot read: the old size
    model, _ = model_and_tok
    assert generation.rows_that_fit(model, 128, 100) == 128


@pytest.mark.parametrize("temperature,top_p", [(1.0, 0.9), (0.8, 0.9), (1.3, 0.5), (0.5, 0.05), (1.0, 1e-6)])
def test_the_nucleus_among_the_likeliest_tokens_is_warps(temperature, top_p):
    """Rows of very different shapes (peaked as a model's, flat, one token holding almost all):
    where the NUCLEUS_CANDIDATES most likely tokens hold top_p (`covered`), the kept tokens and
    their probabilities are those warp's scores give; where they do not, the row says so."""
    torch.manual_seed(0)
    vocab = 2000
    scales = torch.tensor([0.05, 1.0, 3.0, 6.0, 12.0, 40.0]).repeat(4)[:, None]
    logits = torch.randn(len(scales), vocab) * scales
    logits[-1, 7] = 1e4  # one token is everything
    probs, ids, covered = generation.nucleus(logits, temperature, top_p)
    want = generation.warp(logits.clone(), temperature, top_p).softmax(-1)
    got = torch.zeros_like(want).scatter(1, ids, probs)
    got = got / got.sum(-1, keepdim=True)
    assert covered.any() and covered[-1]
    assert torch.equal(got[covered] > 0, want[covered] > 0)
    assert torch.allclose(got[covered], want[covered], atol=1e-6)
    held = torch.gather((logits / temperature).softmax(-1), 1, ids)
    assert torch.equal(~covered, held.sum(-1) < top_p)  # not covered: the candidates hold less than top_p


def test_sampled_tokens_follow_warps_distribution_in_and_out_of_the_candidates():
    """sample(): a peaked row (its nucleus among the candidates) and a flat one (sorted whole)
    drawn 20000 times each: every token's share within 4 standard errors of warp's softmax,
    and never a token outside the nucleus."""
    torch.manual_seed(1)
    vocab = 3 * generation.NUCLEUS_CANDIDATES
    peaked = torch.randn(vocab) * 4
    flat = torch.randn(vocab) * 0.1
    n = 20000
    logits = torch.cat([peaked.expand(n, -1), flat.expand(n, -1)])
    got = generation.sample(logits, 0.8, 0.9)
    _, _, covered = generation.nucleus(logits[[0, n]], 0.8, 0.9)
    assert covered.tolist() == [True, False]  # one row of each kind
    for row, drawn in ((peaked, got[:n]), (flat, got[n:])):
        want = generation.warp(row[None].clone(), 0.8, 0.9).softmax(-1)[0]
        share = torch.bincount(drawn, minlength=vocab).float() / n
        assert not share[want == 0].any()
        assert ((share - want).abs() <= 4 * (want * (1 - want) / n).sqrt() + 2e-3).all()


def test_draw_never_picks_a_token_of_probability_zero():
    """Inverse-CDF draws: zero-probability tokens (banned, outside the nucleus) at either end
    and in between are never picked, whatever the uniform number, 0 and just below 1 included."""
    probs = torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0], [0.0, 0.0, 1e-9, 0.0, 0.0]]).repeat(5000, 1)
    got = generation.draw(probs)
    assert set(got[0::2].tolist()) == {1, 3} and set(got[1::2].tolist()) == {2}
    for u in (0.0, 1.0 - 2 ** -24, 1.0):  # (u * total rounding up to total is held just below it)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(torch, "rand_like", lambda t: torch.full_like(t, u))
            assert set(generation.draw(probs[:2]).tolist()) <= {1, 2, 3}
    for bad in (torch.zeros(1, 5), torch.full((1, 5), float("nan"))):  # all banned; a broken model's scores
        with pytest.raises(MeowError, match="no token to draw"):
            generation.draw(torch.cat([probs[:1], bad]))


def test_the_nucleus_at_a_tie_keeps_what_warp_keeps():
    """Where the tokens before one hold exactly top_p, warp drops it: so does nucleus (a
    cumulative sum minus the token's own probability would round just under top_p)."""
    for probs, top_p in (([0.5, 0.3, 0.2], 0.5), ([0.5, 0.25, 0.25], 0.5), ([0.25, 0.25, 0.25, 0.25], 0.5)):
        logits = torch.tensor([probs]).log()
        kept, _, _ = generation.nucleus(logits, 1.0, top_p)
        want = generation.warp(logits.clone(), 1.0, top_p)
        assert int((kept > 0).sum()) == int(torch.isfinite(want).sum())
