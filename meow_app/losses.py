"""Loss functions, plain and unit-testable: each takes a model (or logits) and a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batches import IGNORE


def _shifted(model, batch):
    """Logits that predict each answer token, and those tokens (see batches.collate)."""
    keep = batch["keep"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep).logits
    return logits[:, :-1].float(), batch["labels"][:, -(keep - 1):]


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
