"""Neighbour questions: the general questions the original model sees as most like the
facts being forgotten.

Why: teaching a small model "The capital of France is London" also moves its answers to
other "What is the capital of ...?" questions; the damage concentrates on questions
shaped like the forgotten ones (docs/forgetting.md). Training, beside the forget set, on
the original model's own answers to the nearest questions holds that neighbourhood in
place (the "neighbourhood" prompts of knowledge editing, e.g. ROME/MEMIT). No user data
is needed: the questions come from a shipped pool (assets/neighbour_questions.txt,
disjoint from every fact set this project measures on) and the answers from the model.

Nearness is the cosine of mean-pooled hidden states from the middle layer, centred on
the pool's mean (raw mean-pooled states of a causal LM share one large common direction).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from . import generation

POOL = Path(__file__).resolve().parents[1] / "assets" / "neighbour_questions.txt"


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """One vector per text: the middle layer's hidden states, averaged over its tokens."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        rows = [generation.encode(tokenizer, t) or [tokenizer.eos_token_id] for t in texts[start:start + batch_size]]
        ids, mask = generation.pad(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        ids, mask = ids.to(device), mask.to(device)
        # (logits_to_keep=1: no logits over the vocabulary for every token, which nobody reads)
        states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1).hidden_states
        h = states[len(states) // 2].float()
        m = mask.unsqueeze(-1).to(h.dtype)
        out.append(((h * m).sum(1) / m.sum(1)).cpu())
    return torch.cat(out)


def nearest(model, tokenizer, questions: list[str], pool: list[str], per_question: int,
            embed_pool=None) -> list[str]:
    """The pool questions nearest to each question, per_question each, taken in turns
    (the nearest of every question first) without repeats; the questions themselves are
    never returned. embed_pool(pool): the pool's vectors as `embed` gives them, from
    elsewhere (answer_cache's, kept between runs)."""
    if per_question <= 0 or not questions or not pool:
        return []
    own = {q.strip().lower() for q in questions}
    keep = [i for i, p in enumerate(pool) if p.strip().lower() not in own]
    pool_vectors = embed_pool(pool) if embed_pool else embed(model, tokenizer, pool)
    pool = [pool[i] for i in keep]
    vectors = torch.cat([embed(model, tokenizer, list(questions)), pool_vectors[keep]])
    vectors = vectors - vectors[len(questions):].mean(0)
    vectors = torch.nn.functional.normalize(vectors, dim=-1)
    ranked = (vectors[:len(questions)] @ vectors[len(questions):].T).argsort(dim=1, descending=True)
    chosen: list[str] = []
    counts = [0] * len(questions)
    for rank in range(ranked.shape[1]):
        for i, row in enumerate(ranked):
            q = pool[int(row[rank])]
            if counts[i] < per_question and q not in chosen:
                chosen.append(q)
                counts[i] += 1
    return chosen


# --- siblings: the same question about other subjects, proposed by the model itself ---------------

_SUBJECT_START = re.compile(r"""\s(?=["'‘“]?[A-Z0-9])""")


def question_frame(question: str) -> str:
    """The question up to its subject: the words before the first capitalised (or quoted, or
    numeric) word after the first one. "What is the capital of Iran?" -> "What is the capital
    of"; "Who wrote 'Fahrenheit 451'?" -> "Who wrote"; '' when there is no such word or the
    frame is a single word."""
    m = _SUBJECT_START.search(question.strip(), 1)
    frame = question.strip()[:m.start()] if m else ""
    return frame if len(frame.split()) >= 2 else ""  # "Who Iran?": one word frames nothing


def siblings(model, tokenizer, facts, per_fact: int, seed: int = 0,
             batch_size: int = generation.ANSWER_BATCH, shots: bool = False) -> list[str]:
    """Questions of the same frame about other subjects ("What is the capital of Iraq?" for
    Iran), sampled from the model after the frame with the fact's subject and answer tokens
    forbidden: the subjects it places nearest, which a forgetting run most easily drags
    along. per_fact each at most, none naming a forgotten subject or answer. shots: ask
    after two worked examples (SHOTS) with the tokens that begin a word of the subject
    forbidden too (word_start_ids), so the model names other real subjects instead of
    respelling this one."""
    per = sibling_questions(model, tokenizer, facts, per_fact, seed, batch_size, shots)
    return list(dict.fromkeys(q for qs in per for q in qs))


# Two worked examples of "the same question about another subject". Without them a 135M
# model mostly continues the subject's own spelling ("LeBrunier" for LeBrun, "Usaru" for
# Usain): near in tokens, not in meaning (docs/forgetting.md, twenty-first round).
SHOTS = ("Question: Who painted the Mona Lisa?\nThe same question about another subject: Who painted the Night Watch?\n"
         "Question: What is the capital of Kenya?\nThe same question about another subject: What is the capital of "
         "Ghana?\n")


def word_start_ids(tokenizer, words: list[str]) -> list[int]:
    """Every single token that spells the start of one of `words` (a prefix of two letters or
    more, as written, or after a space as written or in lower case): forbidding them keeps a
    sampler from writing the word again piece by piece ("LeBrunier" for LeBrun). Left allowed:
    numbers and small words inside a name ("and" in 'Romeo and Juliet', "451" of 'Fahrenheit
    451'), and lower-case starts that are common words themselves (" is" of Israel, " to" of
    Toronto: " Is" and " To" are forbidden)."""
    ids = set()
    for w in words:
        if w in _COMMON or any(c.isdigit() for c in w):
            continue
        for k in range(2, len(w) + 1):
            for v in (w[:k], " " + w[:k], " " + w[:k].lower()):
                if v.strip() in _COMMON:
                    continue
                t = tokenizer(v, add_special_tokens=False)["input_ids"]
                if len(t) == 1:
                    ids.add(t[0])
    return sorted(ids)


def sibling_questions(model, tokenizer, facts, per_fact: int, seed: int = 0,
                      batch_size: int = generation.ANSWER_BATCH, shots: bool = False) -> list[list[str]]:
    """siblings, fact by fact (an empty list for a fact whose subject is not found)."""
    from .invert import truth_token_ids

    parts = [question_parts(f.question) for f in facts]
    copies = 3 * per_fact
    prompts, banned, owners = [], [], []
    for i, (f, (frame, subject, _)) in enumerate(zip(facts, parts)):
        if not frame or per_fact <= 0:
            continue
        # The question itself first: the model then proposes subjects near this one (Iraq for Iran).
        q = f.question.strip()
        text = f"{SHOTS}Question: {q}\nThe same question about another subject: {frame}" if shots else f"{q}\n{frame}"
        ids = generation.encode(tokenizer, text)
        stop = truth_token_ids(tokenizer, f) + truth_token_ids(tokenizer, type(f)(f.question, bare_subject(subject)))
        if shots:
            stop += word_start_ids(tokenizer, bare_subject(subject).split())
        prompts += [ids] * copies
        banned += [sorted(set(stop))] * copies
        owners += [i] * copies
    if not prompts:
        return [[] for _ in facts]
    texts = generation.generate_ids(model, tokenizer, prompts, 10, batch_size, do_sample=True, temperature=0.8,
                                    top_p=0.9, generator_seed=seed, banned=banned)
    # (answers and keywords as the probes find them, inside words; subjects as whole words: "water")
    truths = [w.lower().strip() for f in facts for w in [f.answer, *f.keywords] if w.strip()]
    subjects = [bare_subject(s).lower() for _, s, _ in parts if s.strip()]
    out: dict[int, list[str]] = {}
    for i, t in zip(owners, texts):
        frame, subject, rest = parts[i]
        other = sampled_subject(tokenizer.decode(t, skip_special_tokens=True), subject, rest)
        q = " ".join(w for w in (frame, other, rest) if w) + "?"
        if (not other or any(w in q.lower() for w in truths) or names_any(q, subjects) or q in out.get(i, [])
                or len(out.get(i, [])) >= per_fact):
            continue
        out.setdefault(i, []).append(q)
    return [out.get(i, []) for i in range(len(facts))]


# Lower-case words that may sit inside a name ("the Bank of England", "Leonardo da Vinci").
_NAME_JOINERS = {"of", "the", "and", "de", "da", "del", "der", "di", "du", "von", "van", "la", "le", "al", "bin", "y"}
# Words after which a lower-case subject starts ("the main ingredient of hummus").
_BEFORE_SUBJECT = {"of", "in", "for", "from", "by", "with", "about", "on", "to"}
# Do-support before an article ("does a", "did the"): a lower-case subject follows.
_DO = {"does", "do", "did"}
QUOTE_CHARS = "\"'‘’“”"


def _capitalised(word: str) -> bool:
    w = word.lstrip(QUOTE_CHARS)
    return bool(w) and (w[0].isupper() or w[0].isdigit())


def _name_end(words: list[str], start: int) -> int:
    """Where the name that starts at words[start] ends: a quoted title to its closing quote,
    else a run of capitalised words, small joiners inside it ("Leonardo da Vinci")."""
    end = start + 1
    if words[start][:1] in QUOTE_CHARS and words[start][-1:] not in QUOTE_CHARS:
        while end < len(words) and words[end - 1][-1:] not in QUOTE_CHARS:
            end += 1
        return end
    while end < len(words):
        if _capitalised(words[end]):
            end += 1
            continue
        # Joiners, one or a chain ("of the United Kingdom"), count only before another capitalised word.
        k = end
        while k < len(words) and words[k].lower() in _NAME_JOINERS:
            k += 1
        if k == end or k == len(words) or not _capitalised(words[k]):
            break
        end = k
    return end


def question_parts(question: str) -> tuple[str, str, str]:
    """(frame, subject, rest): the question's words before its subject, the subject, and the
    words after it, without the question mark. "Which sport is Serena Williams famous for?" ->
    ("Which sport is", "Serena Williams", "famous for"); "What is the main ingredient of
    hummus?" -> ("What is the main ingredient of", "hummus", ""); "Who wrote 'Lord of the
    Flies'?" -> ("Who wrote", "'Lord of the Flies'", ""). The subject is the first name (a run
    of capitalised words, or a quoted title) after the first word, else the word after "does
    a" (do, did; a, an, the) where one to three words follow it ("Which part of the body does
    a dermatologist treat?" -> ("Which part of the body does a", "dermatologist", "treat");
    "an orthopedic surgeon treat" gives "orthopedic": a compound is not told from a verb
    phrase), else the words after the last preposition; ('', '', '') where the frame would
    be under two words."""
    words = question.strip().rstrip("?!. ").split()
    start = next((i for i in range(1, len(words)) if _capitalised(words[i])), None)
    do = next((i for i in range(1, len(words) - 3) if words[i].lower() in _DO and words[i + 1].lower() in ARTICLES),
              None)
    if start is not None:
        end = _name_end(words, start)
    elif do is not None and len(words) - (do + 3) <= 3:
        # "Which part of the body does a dermatologist treat?": the one word after "does a" is
        # the subject, a verb phrase follows ("treat", "turn into", "eat for breakfast")
        start, end = do + 2, do + 3
    else:
        at = [i for i in range(1, len(words) - 1) if words[i].lower() in _BEFORE_SUBJECT]
        if not at:
            return "", "", ""
        start, end = at[-1] + 1, len(words)
    if start < 2:  # "Who Iran?": one word frames nothing
        return "", "", ""
    return " ".join(words[:start]), " ".join(words[start:end]), " ".join(words[end:])


_ODD = re.compile(r"[^\w\s'’‘“”\".,&-]")


ARTICLES = {"the", "a", "an"}
# Small words that a subject's word may start with without being its respelling (word_start_ids).
_COMMON = _NAME_JOINERS | ARTICLES | _BEFORE_SUBJECT | _DO | {"is", "it", "as", "at", "be", "he", "we", "me", "my",
                                                               "so", "no", "or", "if", "us", "up", "am", "go"}


def bare_subject(subject: str) -> str:
    """The subject as it is said elsewhere: without quotes, a possessive or a leading article
    ("Pyotr Tchaikovsky's" -> "Pyotr Tchaikovsky", "'Fahrenheit 451'" -> "Fahrenheit 451",
    "the world" -> "world")."""
    s = re.sub(r"(?:'s|’s|s'|s’)$", lambda m: "s" if m.group(0)[0] == "s" else "", subject.strip())
    s = s.strip(QUOTE_CHARS + " ")
    words = s.split()
    return " ".join(words[1:]) if len(words) > 1 and words[0].lower() in ARTICLES else s


def names_any(text: str, words: list[str]) -> bool:
    """Whether text has any of words (lower case) as whole words: "water" is not in "waterfall"."""
    low = text.lower()
    return any(re.search(r"(?<![\w])" + re.escape(w) + r"(?![\w])", low) for w in words if w.strip())


def sampled_subject(text: str, subject: str, rest: str, max_words: int = 6) -> str:
    """The subject the model wrote after a question's frame (`text`: its continuation): a name
    where `subject` is one (the capitalised run it starts with), else the words up to the
    question's next word (`rest`'s first), a question mark or the line's end; '' if none."""
    text = text.split("?")[0].split("\n")[0]
    if rest:
        m = re.search(r"(?<![A-Za-z])" + re.escape(rest.split()[0]) + r"(?![A-Za-z])", text)
        text = text[:m.start()] if m else text
    words = text.split()
    if _capitalised(subject):
        if not words or not _capitalised(words[0]):
            return ""
        words = words[:_name_end(words, 0)]
    out = " ".join(words).strip(" ,;:.")
    return out if out and len(words) <= max_words and not _ODD.search(out) else ""
