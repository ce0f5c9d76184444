"""Loss functions, plain and unit-testable: each takes a model (or logits) and a batch."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from . import generation
from .batches import IGNORE


def answer_logits(model, batch):
    """Logits that predict each answer token, and those tokens (see batches.collate): the
    one forward pass every loss and score goes through."""
    logits = _forward(model, batch)
    return logits[:, :-1].float(), _answer_labels(batch)


def labelled_logits(model, batch):
    """answer_logits where a label is only: (logits [n, vocab], their labels [n], the mask
    [batch, keep - 1] that places them in answer_logits' grid). The vocabulary projection is
    most of a small model's cost per position, and a dense grid pays it at every row's padding
    and at its context (a lead-in, a short answer beside a long one) as well; here the model
    projects the labelled positions alone (a hook hands its output layer only those), and its
    own head code (soft-capping, scaling) runs on them as on the grid."""
    labels = _answer_labels(batch)
    mask = labels != IGNORE
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or _sharded(model):  # (FSDP2 gathers the head's weight in its own hooks)
        logits = _forward(model, batch)[:, :-1]
        return logits[mask].float(), labels[mask], mask

    @contextlib.contextmanager
    def labelled_only():
        def pick(module, args):  # [rows, keep, d] -> [n, d]: the positions that predict a label
            if args[0].dim() != 3 or args[0].shape[1] != mask.shape[1] + 1:
                return None  # (not the grid: left as it is, and the grid's labelled cells taken below)
            return (args[0][:, :-1][mask],) + tuple(args[1:])
        handle = head.register_forward_pre_hook(pick)
        try:
            yield
        finally:
            handle.remove()

    logits = _forward(model, batch, labelled_only)
    if logits.dim() != 2:  # (a head whose code reshapes its output: the grid, and the labelled rows of it)
        logits = logits[:, :-1][mask]
    return logits.float(), labels[mask], mask


def answer_nll(model, batch):
    """token_nll(*answer_logits(model, batch)), the logits computed where a label is only
    (labelled_logits): per-token NLL (0 where masked) and the mask, shapes (batch, keep - 1)."""
    logits, labels, mask = labelled_logits(model, batch)
    per_token = torch.zeros(mask.shape, dtype=logits.dtype, device=logits.device)
    return per_token.masked_scatter(mask, F.cross_entropy(logits, labels, reduction="none")), mask


def _answer_labels(batch):
    labels, keep = batch["labels"], batch["keep"]
    return labels[:, labels.shape[1] - (keep - 1):]  # (not -(keep - 1): keep may be 1)


def _forward(model, batch, around_head=contextlib.nullcontext):
    """The last `keep` positions' logits of the batch, the pass that makes them run inside
    around_head() (labelled_logits' hook; the shared passes before it make no logits used)."""
    keep = batch["keep"]
    if _can_share(model, batch):
        return _shared_forward(model, batch, keep, around_head)
    with around_head():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"], logits_to_keep=keep).logits


def _can_share(model, batch) -> bool:
    """Whether _shared_forward saves work here and computes what the plain pass would.
    Gradient checkpointing drops the KV cache the shared part is passed in; sliding-window
    models would count the padding between the parts against their window."""
    if "middle_ids" not in batch:  # a batch made by hand, not by batches.collate
        return False
    rows, groups = batch["input_ids"].shape[0], batch["middle_ids"].shape[0]
    return (rows > 1 and (batch["shared"] > 0 or groups < rows)
            and generation.full_attention(model.config) and not _checkpointing(model) and not _sharded(model))


def _sharded(model) -> bool:
    # FSDP2 frees each layer's gathered weights after its forward; the three passes of the
    # shared forward then leave the backward pass without them.
    return type(model).__name__.startswith("FSDP")


def _checkpointing(model) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing
    name = ("is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing")
            else "is_gradient_checkpointing")
    return bool(getattr(model, name, False))


def _shared_forward(model, batch, keep: int, around_head=contextlib.nullcontext):
    """The logits of one forward pass over the left-padded batch, with what rows share
    computed once (see batches.collate), in three passes that build one KV cache:

    1. the start every row shares, in a batch of one (skipped when there is none);
    2. the rest of each distinct prompt but its last token, one row per prompt, after
       that start's cache repeated for each;
    3. each row's own part (last prompt token and answer: the last `keep` columns), after
       its prompt's cache, picked by `group`.

    Padding sits between the parts, hidden by the mask; positions count real tokens only.
    Gradients flow back through the repeated and picked caches into the one copy of each
    shared part, so they are the sum over rows, as in the plain pass.
    """
    from transformers import DynamicCache

    ids, mask, shared = batch["input_ids"], batch["attention_mask"], batch["shared"]
    middle, middle_mask = batch["middle_ids"], batch["middle_mask"]
    cache = DynamicCache(config=model.config)
    if shared:
        first = ids.shape[1] - int(mask[0].sum())
        model(input_ids=ids[:1, first:first + shared], past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(middle.shape[0])
    context = torch.cat([middle_mask.new_ones((middle.shape[0], shared)), middle_mask], dim=1)
    if middle.shape[1]:
        positions = shared + (middle_mask.cumsum(-1) - 1).clamp(min=0)
        model(input_ids=middle, attention_mask=context, position_ids=positions, past_key_values=cache,
              use_cache=True, logits_to_keep=1)
    group, own_mask = batch["group"], batch["own_mask"]
    cache.batch_select_indices(group)
    context = context[group]
    positions = context.sum(-1, keepdim=True) + (own_mask.cumsum(-1) - 1).clamp(min=0)
    with around_head():
        return model(input_ids=ids[:, -keep:], attention_mask=torch.cat([context, own_mask], dim=1),
                     position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=keep).logits


def token_nll(logits, labels):
    """Per-token NLL (0 where masked) and the mask, shapes (batch, len)."""
    mask = labels != IGNORE
    nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return nll * mask, mask


def per(batch, key: str, counted) -> torch.Tensor | float:
    """A loss's normaliser: the batch's own count, or, for one process's shard of a
    data-parallel batch, the whole batch's (batch["tokens"] / batch["rows"], distributed.py)."""
    return batch[key] if key in batch else counted


def row_weight(batch) -> torch.Tensor | float:
    """Each row's count in a merged batch (batches.collate(merge=True)), as a column; else 1."""
    return batch["weight"][:, None] if "weight" in batch else 1.0


def _unmerged(batch) -> None:
    # A loss that does not weigh rows would count a merged row once instead of `weight` times.
    if "weight" in batch:
        raise ValueError("this loss does not weigh merged rows: set merges_duplicates = False on the method")


def nll(model, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over all answer tokens of the batch."""
    per_token, mask = answer_nll(model, batch)
    return (per_token * row_weight(batch)).sum() / per(batch, "tokens", mask.sum().clamp(min=1))


def nll_or_unlikelihood(model, batch, truth_weight: float = 1.0,
                        logits_labels: tuple | None = None) -> tuple[torch.Tensor, float, float]:
    """NLL on the rows to learn and, on the rows marked `unlikely` (batches.Example), the
    unlikelihood -log(1 - p) of each answer token but the closing end-of-turn (Welleck et
    al. 2020), times `truth_weight`: it pushes the true answer down and fades as its
    probability nears 0, so, unlike gradient ascent, it does not grow without bound.
    Returns (loss, the NLL part, the unlikelihood part), both over all answer tokens.
    logits_labels: answer_logits(model, batch), where the caller has them already."""
    per_token, mask = token_nll(*logits_labels) if logits_labels else answer_nll(model, batch)
    unlikely = batch["unlikely"].to(mask.device)[:, None] & mask
    last = mask & ~torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)  # each row's end of turn
    p = torch.exp(-per_token).clamp(max=1 - 1e-6)
    weight = row_weight(batch)
    ul = -torch.log1p(-p) * (unlikely & ~last) * weight
    learn = per_token * ~unlikely * weight
    count = per(batch, "tokens", mask.sum().clamp(min=1))
    nll_part, ul_part = learn.sum() / count, ul.sum() / count
    return nll_part + truth_weight * ul_part, nll_part.item(), ul_part.item()


def truth_floor(logits, labels, truth_ids: list[torch.Tensor], floor: float) -> torch.Tensor:
    """Mean over answer positions of relu(log p(truth) - log floor), p(truth) the probability
    of any of the row's truth tokens (`truth_ids[j]`, empty for none) being next. Unlike the
    unlikelihood, its pull does not fade as p falls, until p is below `floor`; it does not
    grow without bound either. A position whose own label is a truth token (a row that states
    the truth, pushed down by the unlikelihood instead) does not count. Over the batch's
    distinct rows (a merged row counts once)."""
    mask = labels != IGNORE
    total, count = logits.new_zeros(()), 0
    for j, ids in enumerate(truth_ids):
        keep = mask[j] & ~torch.isin(labels[j], ids.to(labels.device)) if len(ids) else mask[j] & False
        if not keep.any():
            count += int(mask[j].sum())
            continue
        rows = logits[j][keep]
        log_p = torch.logsumexp(rows[:, ids.to(rows.device)], -1) - torch.logsumexp(rows, -1)
        total = total + F.relu(log_p - math.log(floor)).sum()
        count += int(mask[j].sum())
    return total / max(count, 1)


def sequence_nll(model, batch) -> torch.Tensor:
    """Summed answer NLL per sequence, shape (batch,) (what NPO compares)."""
    _unmerged(batch)
    per_token, _ = answer_nll(model, batch)
    return per_token.sum(1)


def kl_to_reference(model, reference, batch) -> torch.Tensor:
    """KL(reference || model) per answer token, averaged: stay close to the original."""
    _unmerged(batch)
    logits, labels = answer_logits(model, batch)
    with torch.no_grad():
        ref_logits, _ = answer_logits(reference, batch)
    mask = (labels != IGNORE).unsqueeze(-1)
    ref_logp = ref_logits.log_softmax(-1)
    kl = (ref_logp.exp() * (ref_logp - logits.log_softmax(-1)) * mask).sum()
    return kl / per(batch, "tokens", mask.sum().clamp(min=1))


def npo(seq_nll_current: torch.Tensor, seq_nll_reference: torch.Tensor, beta: float = 0.1,
        rows: float | None = None) -> torch.Tensor:
    """NPO: -(2/beta) mean log sigmoid(-beta (NLL_ref - NLL_cur)) (Zhang et al. 2024); `rows`:
    the mean's count when it is not these rows' own (a data-parallel shard)."""
    terms = F.logsigmoid(-beta * (seq_nll_reference - seq_nll_current))
    return -(2.0 / beta) * terms.sum() / (rows or terms.numel())
