import torch

from meow_app import batches, losses
from tiny import tiny_model, tiny_tokenizer


def test_batched_nll_equals_per_example_full_logits():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    ex = [batches.encode_example(tok, "Who wrote Hamlet?", "Shakespeare"),
          batches.encode_example(tok, "What is the capital of Peru, please?", "Lima")]
    total, count = 0.0, 0
    for e in ex:  # the plain way: right-sized, full logits, one example at a time
        logits = model(input_ids=torch.tensor([e.ids])).logits[0, :-1]
        labels = torch.tensor(e.labels[1:])
        total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
        count += (labels != -100).sum().item()
    batch = batches.collate(ex, tok.pad_token_id)
    assert abs(losses.nll(model, batch).item() - total / count) < 1e-4
    seq = losses.sequence_nll(model, batch)
    assert seq.shape == (2,) and abs(seq.sum().item() - total) < 1e-3


def test_kl_to_itself_is_zero_and_npo_matches_formula():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    batch = batches.collate([batches.encode_example(tok, "Q?", "Answer")], tok.pad_token_id)
    assert abs(losses.kl_to_reference(model, model, batch).item()) < 1e-6
    cur, ref = torch.tensor([2.0, 3.0]), torch.tensor([2.5, 1.0])
    expected = -(2 / 0.1) * torch.log(torch.sigmoid(-0.1 * (ref - cur))).mean()
    assert torch.allclose(losses.npo(cur, ref, 0.1), expected)


def test_answer_masking():
    tok = tiny_tokenizer()
    e = batches.encode_example(tok, "Q?", "Yes")
    answer = [t for t in e.labels if t != -100]
    assert tok.decode(answer) == "Yes<|im_end|>"
    assert len(e.ids) == len(e.labels)
