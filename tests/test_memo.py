import pytest
import torch

from meow_app import generation, memo
from meow_app.errors import MeowError
from tiny import tiny_model, tiny_tokenizer

TEXTS = [("Who wrote Hamlet?", "William Shakespeare wrote it."),
         ("What is the capital of Peru?", "Lima is the capital."),
         ("Who painted The Starry Night?", "Vincent van Gogh, in 1889.")]


@pytest.fixture(scope="module")
def memorized():
    """The tiny model trained until it half-remembers TEXTS, so MEMO has something to find."""
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rows = [generation.encode(tok, f"{q} {t}") + [tok.eos_token_id] for q, t in TEXTS]
    model.train()
    for _ in range(60):
        for r in rows:
            ids = torch.tensor([r])
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), tok


def test_cuts_follow_the_definition():
    assert memo.cuts("Q?", "abcdefg", "suffix", 3) == [("Q? a", "bcdefg"), ("Q? abcd", "efg")]
    assert memo.cuts("Quest", "ans", "prefix", 2) == [("Q", "uest ans"), ("Que", "st ans")]
    with pytest.raises(MeowError, match="MEMO mode must be 'suffix' or 'prefix', got 'middle'"):
        memo.cuts("Q", "A", "middle")
    with pytest.raises(MeowError, match="stride must be >= 1, got 0"):
        memo.cuts("Q?", "abcdefg", "suffix", 0)


def test_rouge1_precision_on_known_strings():
    assert memo.rouge1_precision("the cat sat", "the cat sat on the mat") == 1.0
    assert memo.rouge1_precision("the dog", "the cat") == 0.5
    assert memo.rouge1_precision("", "the cat") == 0.0


@pytest.mark.parametrize("mode", ["suffix", "prefix"])
def test_batched_memo_equals_one_cut_at_a_time(memorized, mode):
    model, tok = memorized
    batched = memo.memo_scores(model, tok, TEXTS, mode=mode, stride=3, batch_size=8)
    reference = [memo.memo_reference(model, tok, q, t, mode=mode, stride=3) for q, t in TEXTS]
    assert max(batched) > 0.3, "the memorised model should reproduce some of the texts"
    assert batched == pytest.approx(reference, abs=1e-9)


def test_memo_ranks_memorised_above_new_text(memorized):
    model, tok = memorized
    known, new = memo.memo_scores(model, tok, [TEXTS[0], (TEXTS[0][0], "Zq xw vv kk ttt pl.")])
    assert known > new


def ma_plain(model, tok, question, text):
    """MA by its definition, one text at a time (no batch, no padding): the share of answer
    tokens that are the model's top next token after the question and the answer so far."""
    p, a = generation.encode(tok, question + " "), generation.encode(tok, text)
    top = model(input_ids=torch.tensor([p + a])).logits[0].argmax(-1).tolist()
    return sum(top[len(p) + j - 1] == a[j] for j in range(len(a))) / len(a)


def el_plain(model, tok, question, text, n=2, stride=1):
    """EL_n by its definition, one answer prefix at a time through `model.generate` (as
    memo_reference does): greedy, as long as the rest of the answer, cut at EOS."""
    p, a = generation.encode(tok, question + " "), generation.encode(tok, text)
    eos = generation.eos_ids(model, tok)
    shares = []
    for k in range(0, max(len(a) - n, 0) + 1, stride):
        ids, rest = torch.tensor([p + a[:k]]), a[k:]
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=len(rest), eos_token_id=eos, pad_token_id=tok.pad_token_id,
                             temperature=None, top_p=None, top_k=None)
        got = out[0, ids.shape[1]:].tolist()
        got = got[:next((j for j, t in enumerate(got) if t in eos), len(got))]
        true = [tuple(rest[i:i + n]) for i in range(len(rest) - n + 1)]
        have = {tuple(got[i:i + n]) for i in range(len(got) - n + 1)}
        shares.append(sum(g in have for g in true) / len(true) if true else 0.0)
    return sum(shares) / len(shares)


@torch.no_grad()
def test_ma_and_el_equal_a_plain_loop(memorized):
    model, tok = memorized
    items = TEXTS + [("Who wrote Hamlet?", "Zq xw vv kk ttt pl.")]
    ma = memo.memorization_accuracy(model, tok, items, batch_size=3)  # two batches, padded
    assert ma == pytest.approx([ma_plain(model, tok, q, t) for q, t in items], abs=1e-9)
    el = memo.extraction_likelihood(model, tok, [TEXTS[0], items[-1]], stride=3, batch_size=4)
    assert el == pytest.approx([el_plain(model, tok, q, t, stride=3) for q, t in (TEXTS[0], items[-1])], abs=1e-9)
    el3 = memo.extraction_likelihood(model, tok, TEXTS[1:2], n=3, stride=4)
    assert el3 == pytest.approx([el_plain(model, tok, *TEXTS[1], n=3, stride=4)], abs=1e-9)
    assert ma[0] > 0.5 and el[0] > 0.2, "the memorised model should reproduce some of the first text"
    assert ma[0] > ma[-1] and el[0] > el[1]
