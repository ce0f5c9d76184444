import torch

from meow_app import batches, generation, losses
from tiny import sharp_tiny_model, tiny_model, tiny_tokenizer


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


# Rows of different lengths sharing a prompt start ("<|im_start|>user\nWho wrote " is 16
# byte tokens here), so the shared path pads between that start and each row's rest.
SHARED_START = [("Who wrote Hamlet?", "William Shakespeare"), ("Who wrote the Iliad, and when?", "Homer"),
                ("Who wrote Dracula?", "Bram Stoker wrote it in 1897."), ("Who wrote it?", "Nobody")]


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = losses.nll(model, batch)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_collate_counts_the_prompt_start_all_rows_share():
    tok = tiny_tokenizer()
    ex = [batches.encode_example(tok, q, a) for q, a in SHARED_START]
    assert batches.collate(ex, tok.pad_token_id)["shared"] == 1 + len("user\nWho wrote ")  # <|im_start|> is one token
    # Identical prompts: every row keeps its last prompt token, whose logits predict the answer.
    same = [batches.encode_example(tok, "Who wrote Hamlet?", a) for a in ("Shakespeare", "Marlowe")]
    prompt = sum(t == -100 for t in same[0].labels)
    assert batches.collate(same, tok.pad_token_id)["shared"] == prompt - 1


def test_shared_start_gives_the_same_loss_and_gradients(monkeypatch):
    """The shared start encoded once (losses._shared_forward) is the same computation as
    the whole left-padded batch: same loss, same gradients (they flow through the cache)."""
    tok = tiny_tokenizer()
    model = sharp_tiny_model(tok).train()
    batch = batches.collate([batches.encode_example(tok, q, a) for q, a in SHARED_START], tok.pad_token_id)
    calls = []
    plain_forward = losses._shared_forward
    monkeypatch.setattr(losses, "_shared_forward", lambda *a: calls.append(1) or plain_forward(*a))
    shared_loss, shared_grads = _loss_and_grads(model, batch)
    assert calls, "the shared path was not taken"
    plain_loss, plain_grads = _loss_and_grads(model, {**batch, "shared": 0})
    assert len(calls) == 1
    assert abs(shared_loss - plain_loss) < 1e-5
    assert len(shared_grads) == len(plain_grads)
    for a, b in zip(shared_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # The per-row losses NPO compares, and a batch of one (nothing to share), agree too.
    with torch.no_grad():
        assert torch.allclose(losses.sequence_nll(model, batch), losses.sequence_nll(model, {**batch, "shared": 0}),
                              atol=1e-4)


def test_shared_start_is_skipped_where_it_would_change_results(monkeypatch):
    tok = tiny_tokenizer()
    model = sharp_tiny_model(tok)
    batch = batches.collate([batches.encode_example(tok, q, a) for q, a in SHARED_START], tok.pad_token_id)
    assert losses._can_share(model, batch)
    assert not losses._can_share(model, {**batch, "shared": generation.MIN_SHARED - 1})
    monkeypatch.setattr(model.config, "sliding_window", 16, raising=False)  # would count the padding
    assert not losses._can_share(model, batch)
    monkeypatch.undo()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not losses._can_share(model, batch)  # checkpointing drops the cache the start comes in
