"""Loss functions, plain and unit-testable: each takes a model (or logits) and a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import generation
from .batches import IGNORE


def _shifted(model, batch):
    """Logits that predict each answer token, and those tokens (see batches.collate)."""
    keep = batch["keep"]
    if _can_share(model, batch):
        logits = _shared_forward(model, batch, keep)
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], logits_to_keep=keep).logits
    return logits[:, :-1].float(), batch["labels"][:, -(keep - 1):]


def _can_share(model, batch) -> bool:
    # Gradient checkpointing drops the KV cache the shared start is passed in; sliding-window
    # models would count the padding between start and rest against their window.
    return (batch.get("shared", 0) >= generation.MIN_SHARED and batch["input_ids"].shape[0] > 1
            and generation.full_attention(model.config) and not _checkpointing(model))


def _checkpointing(model) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing
    name = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


def _shared_forward(model, batch, keep: int):
    """The same logits as one forward pass over the left-padded batch, with the start all
    rows share (the chat template's system prompt: about half of a short example)
    encoded once, in a batch of one, and its KV cache repeated for every row. Gradients
    flow through that cache into the one copy, so they are the same sum over rows.

    Row j's real tokens fill the last len_j columns; without its first `shared` tokens
    they fill the last len_j - shared columns of a batch `shared` narrower: column c of
    the rest holds column c + shared of the batch, and is real where the batch's mask is
    set at column c. The answers stay right-aligned, so `keep` and the labels still hold.
    """
    from transformers import DynamicCache

    ids, mask, shared = batch["input_ids"], batch["attention_mask"], batch["shared"]
    rows, width = ids.shape
    first = width - int(mask[0].sum())
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:1, first:first + shared], past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(rows)
    rest_mask = mask[:, :width - shared]
    rest = ids[:, shared:]  # where rest_mask is 0 these are other tokens of the row, hidden by the mask
    positions = shared + (rest_mask.cumsum(-1) - 1).clamp(min=0)
    full_mask = torch.cat([rest_mask.new_ones((rows, shared)), rest_mask], dim=1)
    return model(input_ids=rest, attention_mask=full_mask, position_ids=positions, past_key_values=cache,
                 use_cache=True, logits_to_keep=keep).logits


def token_nll(logits, labels):
    """Per-token NLL (0 where masked) and the mask, shapes (batch, len)."""
    mask = labels != IGNORE
    nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return nll * mask, mask


def nll(model, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over all answer tokens of the batch."""
    per_token, mask = token_nll(*_shifted(model, batch))
    return per_token.sum() / mask.sum().clamp(min=1)


def sequence_nll(model, batch) -> torch.Tensor:
    """Summed answer NLL per sequence, shape (batch,) (what NPO compares)."""
    per_token, _ = token_nll(*_shifted(model, batch))
    return per_token.sum(1)


def kl_to_reference(model, reference, batch) -> torch.Tensor:
    """KL(reference || model) per answer token, averaged: stay close to the original."""
    logits, labels = _shifted(model, batch)
    with torch.no_grad():
        ref_logits, _ = _shifted(reference, batch)
    mask = (labels != IGNORE).unsqueeze(-1)
    ref_logp = ref_logits.log_softmax(-1)
    kl = (ref_logp.exp() * (ref_logp - logits.log_softmax(-1)) * mask).sum()
    return kl / mask.sum().clamp(min=1)


def npo(seq_nll_current: torch.Tensor, seq_nll_reference: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """NPO: -(2/beta) mean log sigmoid(-beta (NLL_ref - NLL_cur)) (Zhang et al. 2024)."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (seq_nll_reference - seq_nll_current)).mean()
