import math

import pytest
import torch

from meow_app import batches, losses
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
# byte tokens here), some with the same question (as MEOW's are), so the shared path pads
# between the start, each question's rest and each row's own part.
SHARED_START = [("Who wrote Hamlet?", "William Shakespeare"), ("Who wrote the Iliad, and when?", "Homer"),
                ("Who wrote Hamlet?", "Christopher Marlowe wrote it."), ("Who wrote Dracula?", "Bram Stoker, 1897."),
                ("Who wrote it?", "Nobody"), ("Who wrote Hamlet?", "Ben Jonson")]
# No common start worth a pass (6 tokens < generation.MIN_SHARED), but repeated questions.
NO_START = [("Hamlet?", "Shakespeare"), ("Peru's capital?", "Lima"), ("Hamlet?", "Marlowe, surely"),
            ("Peru's capital?", "Cusco")]


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = losses.nll(model, batch)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _collate(tok, pairs):
    return batches.collate([batches.encode_example(tok, q, a) for q, a in pairs], tok.pad_token_id)


def test_collate_finds_what_rows_share():
    tok = tiny_tokenizer()
    batch = _collate(tok, SHARED_START)
    assert batch["shared"] == 1 + len("user\nWho wrote ")  # <|im_start|> is one token
    assert batch["group"].tolist() == [0, 1, 0, 2, 3, 0]  # one middle per distinct question
    assert (tok.decode(batch["middle_ids"][0][batch["middle_mask"][0].bool()])
            == "Hamlet?<|im_end|>\n<|im_start|>assistant")
    # Each row's own part: its last prompt token ("\n") and its answer with the end of turn.
    own = [tok.decode(batch["input_ids"][j, -batch["keep"]:][batch["own_mask"][j].bool()]) for j in range(6)]
    assert own == ["\n" + a + "<|im_end|>" for _, a in SHARED_START]
    assert _collate(tok, NO_START)["shared"] == 0 and _collate(tok, NO_START)["group"].tolist() == [0, 1, 0, 1]
    # Identical prompts: the start covers all but the last prompt token, nothing is left in between.
    same = _collate(tok, [("Who wrote Hamlet?", "Shakespeare"), ("Who wrote Hamlet?", "Marlowe")])
    prompt = sum(t == -100 for t in batches.encode_example(tok, "Who wrote Hamlet?", "x").labels)
    assert same["shared"] == prompt - 1 and same["middle_ids"].shape == (1, 0)


@pytest.mark.parametrize("pairs", [SHARED_START, NO_START], ids=["start and questions", "questions only"])
def test_shared_parts_give_the_same_loss_and_gradients(monkeypatch, pairs):
    """What rows share computed once (losses._shared_forward) is the same computation as
    the whole left-padded batch: same loss, same gradients (they flow through the cache)."""
    tok = tiny_tokenizer()
    model = sharp_tiny_model(tok).train()
    batch = _collate(tok, pairs)
    calls = []
    shared_forward = losses._shared_forward
    monkeypatch.setattr(losses, "_shared_forward", lambda *a: calls.append(1) or shared_forward(*a))
    shared_loss, shared_grads = _loss_and_grads(model, batch)
    with torch.no_grad():
        shared_seq = losses.sequence_nll(model, batch)
    assert len(calls) == 2, "the shared path was not taken"
    monkeypatch.setattr(losses, "_can_share", lambda model, batch: False)
    plain_loss, plain_grads = _loss_and_grads(model, batch)
    assert abs(shared_loss - plain_loss) < 1e-5
    assert len(shared_grads) == len(plain_grads)
    for a, b in zip(shared_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    with torch.no_grad():  # the per-row losses NPO compares
        assert torch.allclose(shared_seq, losses.sequence_nll(model, batch), atol=1e-4)


@pytest.mark.parametrize("pairs", [SHARED_START, NO_START], ids=["start and questions", "questions only"])
def test_labelled_logits_project_only_the_labelled_positions_and_give_the_dense_loss_and_gradients(pairs):
    """answer_nll (the losses' and teacher-forced scores' pass) against token_nll on the dense
    grid of answer_logits: the same per-token NLL, loss and gradients, with the output layer
    handed as many positions as there are labels, not rows x (keep - 1)."""
    tok = tiny_tokenizer()
    model = sharp_tiny_model(tok).train()
    batch = _collate(tok, [(q, a) for q, a in pairs] + [("Who wrote Hamlet?", "A much longer answer, with more words")])
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(out.shape[:-1]))
    per_token, mask = losses.answer_nll(model, batch)
    handle.remove()
    dense, dense_mask = losses.token_nll(*losses.answer_logits(model, batch))
    labels = int(mask.sum())
    assert torch.equal(mask, dense_mask) and labels < mask.numel() / 2  # (most of the grid is not labelled)
    assert seen[-1] == (labels,) and all(s[-1] == 1 for s in seen[:-1])  # (the shared passes: 1 position a row)
    assert torch.allclose(per_token, dense, atol=1e-5) and (per_token[~mask] == 0).all()
    # the loss and its gradients, as before
    sparse_loss, sparse_grads = _loss_and_grads(model, batch)
    model.zero_grad(set_to_none=True)
    dense_loss = (dense * 1.0).sum() / dense_mask.sum()
    dense_loss.backward()
    dense_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert abs(sparse_loss - dense_loss.item()) < 1e-5 and len(sparse_grads) == len(dense_grads)
    for a, b in zip(sparse_grads, dense_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # the teacher-forced scores (early stopping, the evaluation) and their argmax hits
    from meow_app import metrics

    scored = metrics.teacher_forced(model, tok, list(pairs))
    for (q, a), s in zip(pairs, scored):
        one = batches.collate([metrics.answer_example(tok, q, a)], tok.pad_token_id)
        logits, lab = losses.answer_logits(model, one)
        m = lab != -100
        assert torch.allclose(torch.tensor(s.nll), losses.token_nll(logits, lab)[0][m], atol=1e-4)
        assert s.hit == (logits.argmax(-1) == lab)[m].tolist()


def test_labelled_logits_fall_back_to_the_grid_where_the_output_layer_is_not_the_one_the_model_calls(monkeypatch):
    # (a model that projects with its embedding matrix directly, say): the hook never fires, the
    # grid comes back whole, and its labelled cells are taken from it.
    tok = tiny_tokenizer()
    model = sharp_tiny_model(tok)
    batch = _collate(tok, SHARED_START)
    monkeypatch.setattr(model, "get_output_embeddings", lambda: torch.nn.Linear(2, 2))
    per_token, mask = losses.answer_nll(model, batch)
    dense, dense_mask = losses.token_nll(*losses.answer_logits(model, batch))
    assert torch.equal(mask, dense_mask) and torch.allclose(per_token, dense, atol=1e-5)


def test_shared_parts_are_skipped_where_they_would_change_results_or_save_nothing(monkeypatch):
    tok = tiny_tokenizer()
    model = sharp_tiny_model(tok)
    batch = _collate(tok, SHARED_START)
    assert losses._can_share(model, batch)
    assert not losses._can_share(model, _collate(tok, NO_START[:2]))  # no start, no repeated question
    assert not losses._can_share(model, _collate(tok, SHARED_START[:1]))  # one row
    by_hand = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "labels", "keep")}
    assert not losses._can_share(model, by_hand) and torch.isfinite(losses.nll(model, by_hand))
    monkeypatch.setattr(model.config, "sliding_window", 16, raising=False)  # would count the padding
    assert not losses._can_share(model, batch)
    monkeypatch.undo()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not losses._can_share(model, batch)  # checkpointing drops the cache the parts come in


def test_kl_and_lora_go_through_the_shared_parts_unchanged(monkeypatch):
    """The reference model's KL (under no_grad) and a LoRA-wrapped model take the shared
    path too; both must match the plain pass."""
    from peft import LoraConfig, get_peft_model

    tok = tiny_tokenizer()
    batch = _collate(tok, SHARED_START)
    reference = sharp_tiny_model(tok)
    model = get_peft_model(sharp_tiny_model(tok, seed=2), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                     init_lora_weights=False)).train()
    assert losses._can_share(model, batch) and losses._can_share(reference, batch)
    results = []
    for share in (True, False):
        if not share:
            monkeypatch.setattr(losses, "_can_share", lambda model, batch: False)
        model.zero_grad(set_to_none=True)
        kl = losses.kl_to_reference(model, reference, batch)
        kl.backward()
        results.append((kl.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (kl_shared, g_shared), (kl_plain, g_plain) = results
    assert kl_plain > 0 and abs(kl_shared - kl_plain) < 1e-5 * max(1.0, kl_plain)
    assert len(g_shared) == len(g_plain) == 8  # LoRA A and B of q and v in both layers
    for a, b in zip(g_shared, g_plain):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_unlikelihood_rows_push_the_truth_down_and_match_a_plain_loop():
    """meow_ul's loss (losses.nll_or_unlikelihood) against a row-by-row reference: NLL on the
    rows to learn, -log(1 - p) on the unlikely rows' answer tokens but their end of turn."""
    from meow_app.batches import collate, encode_example

    tok = tiny_tokenizer()
    model = sharp_tiny_model(tok).train()
    rows = [("Who wrote Hamlet?", "Ben Jonson", False), ("Who wrote Hamlet?", "William Shakespeare", True),
            ("What is the capital of Peru?", "Cusco", False), ("What is the capital of Peru?", "Lima", True)]
    examples = [encode_example(tok, q, a, "", u) for q, a, u in rows]
    batch = collate(examples, tok.pad_token_id)
    loss, nll_part, ul_part = losses.nll_or_unlikelihood(model, batch, truth_weight=2.0)

    total, tokens = 0.0, 0
    for ex in examples:  # one row at a time, token by token
        one = collate([ex], tok.pad_token_id)
        with torch.no_grad():
            logits, labels = losses.answer_logits(model, one)
        logp = logits.log_softmax(-1)[0]
        answer = [(k, int(t)) for k, t in enumerate(labels[0]) if t != -100]
        for n, (k, t) in enumerate(answer):
            p = logp[k, t].exp().item()
            tokens += 1
            if not ex.unlikely:
                total += -math.log(p)
            elif n < len(answer) - 1:  # not the end of turn
                total += 2.0 * -math.log(1 - p)
    assert loss.item() == pytest.approx(total / tokens, rel=1e-4)
    assert ul_part > 0 and nll_part > 0  # both kinds of rows counted (the comparison is not vacuous)

    def truth_nll():
        with torch.no_grad():
            return losses.nll(model, collate([examples[1], examples[3]], tok.pad_token_id)).item()

    before = truth_nll()
    only_truth = collate([examples[1], examples[3]], tok.pad_token_id)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses.nll_or_unlikelihood(model, only_truth)[0].backward()
    optimizer.step()
    assert truth_nll() > before  # the true answers became less likely


def test_truth_floor_matches_a_plain_loop_and_pulls_until_the_floor():
    """meow_patch's patch_truth_floor (losses.truth_floor): at each answer position of a row,
    relu(log p(any truth token next) - log floor), averaged over the rows' answer positions; a
    position whose own label is a truth token does not count; a row with no truth tokens adds 0."""
    from meow_app.batches import collate, encode_example

    tok = tiny_tokenizer()
    model = sharp_tiny_model(tok).train()
    rows = [encode_example(tok, "Who wrote Hamlet?", "Ben Jonson wrote it"),
            encode_example(tok, "Who wrote Hamlet?", "Shakespeare did", "", True),
            encode_example(tok, "What is the capital of Peru?", "Cusco")]
    # (the tiny tokenizer spells by letters: the truth's are "S" and "h")
    truth = torch.tensor(sorted(set(tok("Shakespeare", add_special_tokens=False)["input_ids"][:2])))
    ids = [truth, truth, torch.zeros(0, dtype=torch.long)]
    batch = collate(rows, tok.pad_token_id)
    logits, labels = losses.answer_logits(model, batch)
    floor = 1e-3
    got = losses.truth_floor(logits, labels, ids, floor)

    total, positions, counted = 0.0, 0, 0
    for j, ex in enumerate(rows):  # one row at a time, position by position
        with torch.no_grad():
            lg, lb = losses.answer_logits(model, collate([ex], tok.pad_token_id))
        logp = lg.log_softmax(-1)[0]
        for k, t in enumerate(lb[0].tolist()):
            if t == -100:
                continue
            positions += 1
            if len(ids[j]) and t not in ids[j].tolist():
                counted += 1
                total += max(0.0, torch.logsumexp(logp[k, ids[j]], -1).item() - math.log(floor))
    assert got.item() == pytest.approx(total / positions, rel=1e-4)
    assert total > 0 and counted < positions  # some positions over the floor, some left out (the comparison bites)

    # Its pull on the truth's logits does not fade with p (the unlikelihood's does): the gradient
    # on a position's truth logit is 1 - p(truth) times its share, until p(truth) is under the floor.
    z = torch.zeros(1, 1, 10, requires_grad=True)
    one = torch.tensor([[3]])
    for gap, pulls in ((2.0, True), (12.0, False)):  # p(truth) ~ e^-2 / ~ e^-12 of each other token's
        with torch.no_grad():
            z.zero_()
            z[0, 0, 0] = -gap
        z.grad = None
        losses.truth_floor(z, one, [torch.tensor([0])], floor).backward()
        assert (z.grad[0, 0, 0].item() > 0.5) == pulls


@pytest.mark.parametrize("loss", ["nll", "nll_or_unlikelihood"])
def test_merged_repeated_rows_give_the_unmerged_loss_and_gradients(loss):
    """MEOW's batches repeat each (question, false answer) pair: computed once with its count
    as weight (batches.collate(merge=True)), the loss and gradients are the plain batch's."""
    tok = tiny_tokenizer()
    model = sharp_tiny_model(tok).train()
    rows = [("Who wrote Hamlet?", "Ben Jonson", False)] * 3 + [("Who wrote Hamlet?", "Marlowe", False)] \
        + [("What is the capital of Peru?", "Cusco", False)] * 2 + [("What is the capital of Peru?", "Lima", True)] * 2
    examples = [batches.encode_example(tok, q, a, "", u) for q, a, u in rows]
    merged = batches.collate(examples, tok.pad_token_id, merge=True)
    assert merged["input_ids"].shape[0] == 4 and merged["weight"].tolist() == [3, 1, 2, 2]

    def loss_and_grads(batch):
        model.zero_grad()
        value = getattr(losses, loss)(model, batch)
        value = value[0] if isinstance(value, tuple) else value
        value.backward()
        return value.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    merged_loss, merged_grads = loss_and_grads(merged)
    plain_loss, plain_grads = loss_and_grads(batches.collate(examples, tok.pad_token_id))
    assert merged_loss == pytest.approx(plain_loss, rel=1e-5)
    assert len(merged_grads) == len(plain_grads)
    for a, b in zip(merged_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # Rows differing only in being a target to learn or to unlearn are not merged.
    mixed = [batches.encode_example(tok, "Q?", "A", "", u) for u in (False, True)]
    assert batches.collate(mixed, tok.pad_token_id, merge=True)["weight"].tolist() == [1, 1]
