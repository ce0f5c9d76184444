"""Prompt formatting and batched generation, shared by inversion, MEMO, probes and chat.

Batches are left-padded so every row's continuation starts at the same position; rows
are grouped by length first, so little compute goes to padding.
"""

from __future__ import annotations

import torch

from .errors import MeowError


def chat_prompt(tokenizer, question: str, system: str | None = None) -> str:
    """The question in the model's own chat template, ready for the answer to follow."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a text; chat prompts already hold their special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pad(rows: list[list[int]], pad_id: int, left: bool = False):
    """Token-id rows into (ids, attention_mask) tensors, padded on the right or the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[j, sl] = torch.tensor(r)
        mask[j, sl] = 1
    return ids, mask


def length_sorted_batches(n_rows: int, lengths: list[int], batch_size: int):
    """Row indices in batches of similar length (less padding)."""
    order = sorted(range(n_rows), key=lambda i: lengths[i])
    for start in range(0, n_rows, batch_size):
        yield order[start:start + batch_size]


class _BanTokens:
    """A logits processor that forbids, row by row, the given token ids."""

    def __init__(self, banned_rows: list[list[int]]):
        self.banned_rows = banned_rows

    def __call__(self, input_ids, scores):
        for j, banned in enumerate(self.banned_rows):
            if banned:
                scores[j, banned] = float("-inf")
        return scores


# Rows decoded at once (answers, MEMO's continuations, inversion's samples). On a CPU a
# decoding step has a fixed cost (reading every weight, per-layer overhead) beside its
# per-row one: measured on the embedded model, 2 threads, 8.1 ms a row at 8 rows, 2.9 at 32,
# 2.3 at 64, 1.9 at 96; so the probes' sets go in one batch. A larger model's KV cache is
# far bigger a token (a 7B model's 0.5 MiB in bf16): batches are cut to fit KV_BUDGET, but
# never below the 32 rows every batch had before.
ANSWER_BATCH = 128
KV_BUDGET = 1 << 30  # bytes
MIN_BATCH = 32


def rows_that_fit(model, batch_size: int, tokens: int) -> int:
    """batch_size, or fewer where rows of `tokens` tokens would take the KV cache past
    KV_BUDGET (at least MIN_BATCH, or batch_size if smaller)."""
    c = model.config
    heads = getattr(c, "num_attention_heads", None)
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    dim = getattr(c, "head_dim", None) or (c.hidden_size // heads if heads and getattr(c, "hidden_size", None) else 0)
    layers = getattr(c, "num_hidden_layers", 0)
    floor = min(batch_size, MIN_BATCH)
    if not (kv_heads and dim and layers):  # (a config these names do not describe: the old size)
        return floor
    row = 2 * layers * kv_heads * dim * next(model.parameters()).element_size() * max(tokens, 1)
    return max(floor, min(batch_size, KV_BUDGET // row))


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens, batch_size: int = 32,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 generator_seed: int | None = None, banned: list[list[int]] | None = None,
                 stop=None, record=None, drafts=None) -> list[list[int]]:
    """Continue each prompt (token ids); returns the new token ids, cut at EOS.

    `max_new_tokens` is one int or one per prompt; each row is generated only as far as
    its own limit needs, so results do not depend on what else is in the batch.
    `banned` (one list per prompt) holds token ids that row may never produce. Greedy and
    sampled rows go through _decode; `model.generate` only where the model's
    generation_config asks for what _decode does not apply (a repetition penalty, min_p, ...).
    `stop(i, ids)`: True ends prompt i's row after the token just added (only an early end:
    `generate`'s path answers to the limit).
    `record` (a drafts.Drafts): every greedy or sampled row decoded by _decode is kept in it,
    with its layer's input at each token read. `drafts` (a drafts.Drafts, greedy only): the
    answers kept there for these prompts (another model's, the same below the drafts' layer)
    are checked from that layer up (drafts.Drafts.follow), and only what is left after a row
    leaves its draft is decoded: the same tokens, for far fewer steps where the drafts hold.
    """
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    eos = set(eos_ids(model, tokenizer))
    out: list[list[int]] = [[] for _ in prompts]
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    if drafts is not None and (do_sample or record is not None):
        raise ValueError("drafts are checked against greedy decoding only, and their answers are not recorded")
    if prompts and drafts is not None and _plain_greedy(model.generation_config):
        # The drafts first; what is left is decoded below from each row's prompt and the
        # tokens kept, to the rest of its limit (`stop` sees the whole answer).
        pick = _sampler(banned, False, temperature, top_p)
        kept, finished = drafts.follow(model, prompts, limits, eos, pick, stop)
        rest = [i for i in range(len(prompts)) if not finished[i]]
        more = generate_ids(model, tokenizer, [prompts[i] + kept[i] for i in rest],
                            [limits[i] - len(kept[i]) for i in rest], batch_size,
                            banned=[banned[i] for i in rest] if banned else None,
                            stop=(lambda k, ids: stop(rest[k], kept[rest[k]] + ids)) if stop else None)
        for k, i in enumerate(rest):
            kept[i] += more[k]
        return kept
    if prompts:
        batch_size = rows_that_fit(model, batch_size, max(len(p) for p in prompts) + max(limits))
    # Group by prompt length and then by limit, so short jobs are not padded to long ones.
    keys = [len(p) * 10_000 + limits[i] for i, p in enumerate(prompts)]
    for rows in length_sorted_batches(len(prompts), keys, batch_size):
        if max(limits[i] for i in rows) <= 0:
            continue
        if _plain_greedy(model.generation_config) and not (do_sample and _sampling_extras(model.generation_config)):
            pick = _sampler([banned[i] for i in rows] if banned else None, do_sample, temperature, top_p)
            row_stop = (lambda j, ids, rows=rows: stop(rows[j], ids)) if stop else None
            got = _decode(model, [prompts[i] for i in rows], [limits[i] for i in rows], eos, pad_id, device, pick,
                          row_stop, record)
        else:  # settings only `generate` applies (a repetition penalty, ...)
            got = _sampled(model, [prompts[i] for i in rows], [limits[i] for i in rows], eos, pad_id, device,
                           [banned[i] for i in rows] if banned else None, do_sample, temperature, top_p)
        for j, i in enumerate(rows):
            out[i] = got[j]
    return out


def _sampler(banned: list[list[int]] | None, do_sample: bool, temperature: float, top_p: float):
    """The next-token choice of _decode, as `generate` makes it: banned tokens out, then
    argmax, or temperature, nucleus (top_p) and a draw from the global torch RNG."""
    def pick(logits, live: list[int]):
        scores = logits.float()
        if banned:
            for k, j in enumerate(live):
                if banned[j]:
                    scores[k, banned[j]] = float("-inf")
        if not do_sample:
            return scores.argmax(-1)
        return sample(scores, temperature, top_p)
    return pick


# top_p's nucleus is looked for among this many most likely tokens first (see nucleus).
NUCLEUS_CANDIDATES = 256


def nucleus(scores, temperature: float, top_p: float):
    """(probs, ids, covered): each row's top_p nucleus among its NUCLEUS_CANDIDATES most
    likely tokens, as warp leaves it (probs over token `ids`, zero outside the nucleus, not
    renormalised), and whether those candidates hold top_p of the row's probability: where
    they do, the nucleus lies among them. Sorting all 49k scores of every row (warp) cost
    more than the model's own decoding step (180 ms for 96 rows against 8 ms for this)."""
    scores = scores / temperature
    k = min(NUCLEUS_CANDIDATES, scores.shape[-1])
    top, ids = scores.topk(k, dim=-1)  # most likely first
    probs = (top - scores.logsumexp(-1, keepdim=True)).exp()
    held = probs.cumsum(-1)
    # warp drops a token when the tokens more likely than it hold top_p already (never the first)
    before = torch.cat([torch.zeros_like(held[:, :1]), held[:, :-1]], dim=1)
    dropped = before >= top_p
    dropped[:, 0] = False
    probs = probs.masked_fill(dropped, 0.0)
    return probs, ids, held[:, -1] >= top_p


def draw(probs):
    """One index per row, drawn in proportion to `probs` (unnormalised, >= 0) from the
    global torch RNG by the inverse of the cumulative sum: torch.multinomial took 94 ms
    for 96 rows of 49k tokens, this 3 ms. A token of probability 0 is never drawn."""
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    if not ((total > 0) & total.isfinite()).all():  # (multinomial refuses these too; one check, one GPU sync)
        raise MeowError("sampling found a row with no token to draw: every token banned, or the model's scores "
                        "are not finite (NaN or infinite)")
    # (u * total may round up to total, past every token: keep it just below)
    u = torch.minimum(torch.rand_like(total) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True)[:, 0]


def sample(scores, temperature: float, top_p: float):
    """The next token of each row, drawn from warp(scores, temperature, top_p).softmax(-1)."""
    if top_p >= 1.0:
        return draw((scores / temperature).softmax(-1))
    probs, ids, covered = nucleus(scores, temperature, top_p)
    out = ids.gather(1, draw(probs)[:, None])[:, 0]
    if not covered.all():  # a flat row: its nucleus is wider than the candidates, sorted whole
        rest = (~covered).nonzero()[:, 0]
        out[rest] = draw(warp(scores[rest], temperature, top_p).softmax(-1))
    return out


def warp(scores, temperature: float, top_p: float):
    """Sampling scores as transformers' TemperatureLogitsWarper then TopPLogitsWarper leave
    them: divided by the temperature, then all but the fewest most likely tokens holding
    top_p of the probability set to -inf."""
    scores = scores / temperature
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


def _sampled(model, prompts, limits, eos, pad_id, device, banned, do_sample, temperature, top_p):
    """One batch through `model.generate` (sampling, or greedy with banned tokens): for
    generation settings _decode does not apply, and as the reference it is tested against."""
    ids, mask = pad(prompts, pad_id, left=True)
    kwargs = dict(do_sample=do_sample, max_new_tokens=max(limits), pad_token_id=pad_id, eos_token_id=sorted(eos))
    if banned:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([_BanTokens(banned)])
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    out = []
    for row, limit in zip(gen[:, ids.shape[1]:].tolist(), limits):
        toks = []
        for t in row[:limit]:
            if t in eos:
                break
            toks.append(t)
        out.append(toks)
    return out


# A shared prompt start shorter than this is not worth its own forward pass.
# Greedy answer length, everywhere a model answers a fact's question (probes, scoring,
# attacks, the general set, the CLI). The spec's ROUGE budget is 200 new tokens (what
# `tofu` uses on a GPU); on CPU one rambling answer makes its whole batch run that long,
# and a fact leaks in the first sentence, so 48: the evaluation's verdicts then agree with
# the run's own before/after probes.
MAX_NEW_TOKENS = 48

MIN_SHARED = 8

# Generation settings that change greedy decoding, with their neutral values: a model whose
# generation_config sets any of them (a repetition penalty, say) goes through `generate`.
_NEUTRAL = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "min_new_tokens": (None, 0),
            "min_length": (None, 0), "bad_words_ids": (None,), "suppress_tokens": (None,),
            "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
            "sequence_bias": (None,), "encoder_repetition_penalty": (None, 1.0), "renormalize_logits": (None, False),
            "exponential_decay_length_penalty": (None,), "stop_strings": (None,)}


# Sampling filters `generate` takes from a model's generation_config beyond temperature and
# top_p (which callers set): a model that sets one samples through `generate`.
_NEUTRAL_SAMPLING = {"min_p": (None, 0.0), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
                     "eta_cutoff": (None, 0.0), "top_h": (None,)}


def _sampling_extras(generation_config) -> bool:
    return any(getattr(generation_config, k, None) not in neutral for k, neutral in _NEUTRAL_SAMPLING.items())


def _plain_greedy(generation_config) -> bool:
    """Whether plain argmax decoding is what `generate` would do with this configuration."""
    return all(getattr(generation_config, k, None) in neutral for k, neutral in _NEUTRAL.items())


def full_attention(config) -> bool:
    """Whether every layer attends to the whole context. Sliding-window and chunked
    attention count cache positions, so padding between the shared prompt start and a
    row's own tokens would eat into the window: those models are only left-padded."""
    if getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None):
        return False
    types = getattr(config, "layer_types", None)
    return not types or all(t == "full_attention" for t in types)


def _decode(model, prompts: list[list[int]], limits: list[int], eos: set[int], pad_id: int, device,
            pick, stop=None, record=None) -> list[list[int]]:
    """Decoding of one batch, the next token chosen by `pick(logits, rows)` (_sampler): what
    `model.generate` computes, for less work, by three savings.

    - Rows leave the batch (and the KV cache) as soon as they end, at EOS or at their own
      limit: the embedded model's answers end anywhere between a few and 48 tokens, and
      MEMO's rows have budgets of very different lengths, so `generate` spent about a
      third of its steps on rows already finished.
    - The start every prompt shares (the chat template's system prompt: about half of
      each prompt; a few-shot prompt) is encoded once and its KV cache copied to every
      row. The rows are then padded between that start and their own tokens; the
      attention mask hides the padding and positions count real tokens only, so each row
      computes what it would alone.
    - A prompt asked several times (sampling a dozen continuations of each) is encoded
      once and its cache copied to its rows.

    `stop(j, ids)`, when given, ends row j early too (after the token just added).
    `record` (a drafts.Drafts): each row's answer is added to it when the row ends, with the
    input of the drafts' layer at every token read (its prompt, the answer tokens fed back).
    """
    out: list[list[int]] = [[] for _ in prompts]
    live = [j for j, limit in enumerate(limits) if limit > 0]
    if not live:
        return out
    if record is None:
        return _decode_rows(model, prompts, limits, eos, pad_id, device, pick, stop, live, out, None)
    seen: list = []  # the layer's input at each model call of the loop, taken by _decode_rows
    handle = record.module.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        return _decode_rows(model, prompts, limits, eos, pad_id, device, pick, stop, live, out, (record, seen))
    finally:
        handle.remove()


def _decode_rows(model, prompts, limits, eos, pad_id, device, pick, stop, live, out, recording):
    """_decode's loop; `recording`: (the drafts.Drafts, the list its hook fills), or None."""
    from transformers import DynamicCache

    parts: dict[int, list] = {j: [] for j in live}  # row -> its layer inputs so far (recording only)
    rows = [prompts[j] for j in live]
    shared = shared_start(rows) if full_attention(model.config) else 0
    shared = shared if shared >= MIN_SHARED else 0
    distinct: dict[tuple, int] = {}
    group = [distinct.setdefault(tuple(r[shared:]), len(distinct)) for r in rows]
    cache = DynamicCache(config=model.config)
    if shared:
        start = torch.tensor([rows[0][:shared]], device=device)
        model(input_ids=start, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(distinct))
        if recording:
            prefix = recording[1].pop()[0]
            for j in live:
                parts[j].append(prefix)
    ids, own = pad([list(r) for r in distinct], pad_id, left=True)
    ids, mask = ids.to(device), torch.cat([own.new_ones((len(distinct), shared)), own], dim=1).to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits
    if recording:
        got = recording[1].pop()
        for j, g in zip(live, group):
            parts[j].append(got[g][own[g].bool().to(got.device)])
    if len(distinct) < len(rows):
        index = torch.tensor(group, device=device)
        cache.batch_select_indices(index)
        logits, mask, pos = logits[index], mask[index], pos[index]
    pos = pos[:, -1:]
    while True:
        nxt = pick(logits[:, -1], live)
        keep = []
        for k, (j, t) in enumerate(zip(live, nxt.tolist())):
            if t not in eos:
                out[j].append(t)
                if len(out[j]) < limits[j] and not (stop and stop(j, out[j])):
                    keep.append(k)
                    continue
            if recording:  # (the row's last token, when not EOS, was never read: its input is not known)
                recording[0].add(prompts[j], out[j], torch.cat(parts.pop(j)))
        if not keep:
            return out
        if len(keep) < len(live):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, pos, nxt = mask[index], pos[index], nxt[index]
            live = [live[k] for k in keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        pos = pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                       use_cache=True).logits
        if recording:
            got = recording[1].pop()
            for k, j in enumerate(live):
                parts[j].append(got[k])


def shared_start(rows: list[list[int]]) -> int:
    """How many leading tokens all rows share, leaving every row at least one of its own."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for k in range(max(n, 0)):
        if any(r[k] != first[k] for r in rows):
            return k
    return max(n, 0)


def eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


SENTENCE_ENDS = ".!?\n"  # where answer's `done` is asked


def answer(model, tokenizer, questions: list[str], max_new_tokens: int = MAX_NEW_TOKENS,
           batch_size: int = ANSWER_BATCH, system: str | None = None, done=None, record=None,
           drafts=None) -> list[str]:
    """Greedy chat answers to questions, in a batch. `done(i, text)`: True ends answer i
    there; asked only where the answer's last token closes a sentence (or a line).
    record, drafts: generate_ids'."""
    prompts = [encode(tokenizer, chat_prompt(tokenizer, q, system)) for q in questions]

    def stop(i, ids):
        last = tokenizer.decode(ids[-1:])
        if not any(c in last for c in SENTENCE_ENDS):
            return False
        return done(i, tokenizer.decode(ids, skip_special_tokens=True).strip())

    ids = generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size, stop=stop if done else None,
                       record=record, drafts=drafts)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
