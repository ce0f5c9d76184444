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
    with pytest.raises(MeowError):
        memo.cuts("Q", "A", "middle")


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


def test_ma_and_el(memorized):
    model, tok = memorized
    ma = memo.memorization_accuracy(model, tok, TEXTS + [("Who wrote Hamlet?", "Zq xw vv kk ttt pl.")])
    el = memo.extraction_likelihood(model, tok, TEXTS[:1] + [("Who wrote Hamlet?", "Zq xw vv kk ttt pl.")], stride=2)
    assert all(0 <= x <= 1 for x in ma + el)
    assert ma[0] > ma[-1] and el[0] > el[1]
