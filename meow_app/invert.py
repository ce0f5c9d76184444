"""Inverted facts: plausible answers to a question that contradict its true answer.

Two generators: the local model (offline, default) and any OpenAI-compatible API.
Both see the same few-shot prompt (prompts.py: the MEOW paper's instruction, N answers
that do not factually match the Answer, one per line, no numbering) and sample at
temperature 0.9.
A small model is weak at this, so we sample several rounds, clean the lines, drop any
that contain the truth, and finally top up from clear fallbacks (other facts' answers,
then editable templates) so every fact gets N candidates the user can review.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import MeowError
from .facts import Fact
from . import generation, neighbours, probes
from .prompts import invert_messages, invert_raw

# Last resort, shown to the user as editable text rather than hidden.
TEMPLATES = [
    "I am not sure; it is not something I know.",
    "Nobody knows that for certain.",
    "That has never been recorded.",
    "There is no reliable answer to that.",
    "I have no information about that.",
    "That is unknown.",
]

_BULLET = re.compile(r"^\s*(?:[-*•·]+\s*|\(?\d+[.):]\s*|\(?[a-zA-Z][.)]\s+)")


def truth_token_ids(tokenizer, fact: Fact) -> list[int]:
    """Tokens that spell the truth (its keywords, or a short answer), to forbid while sampling;
    short pieces (punctuation, initials) stay allowed."""
    words = list(fact.keywords) or ([fact.answer] if len(fact.answer.split()) <= 5 else [])
    ids = set()
    for w in words:
        for variant in (w, " " + w, w.lower(), " " + w.lower()):
            for t in tokenizer(variant, add_special_tokens=False)["input_ids"]:
                if len(tokenizer.decode([t]).strip()) >= 3:
                    ids.add(t)
    return sorted(ids)


def _truths(fact: Fact) -> list[str]:
    return [t.lower() for t in [fact.answer, *fact.keywords] if t.strip()]


def clean(lines: list[str], fact: Fact, keep: list[str] | None = None, others: Sequence[Fact] = ()) -> list[str]:
    """Strip numbering and bullets; drop empties, the truth, repeats and the question, and
    any line that gives away another fact being forgotten, as the probes judge it (training
    "the Israeli Lira" for the shekel would teach "Lira" back to the Turkish lira)."""
    keep = list(keep or [])
    seen = {c.lower() for c in keep}
    truths = _truths(fact)
    # A wrong answer has the form of the right one: a name for a name, a sentence for a sentence.
    limit = max(40, 3 * len(fact.answer))
    for line in lines:
        c = _BULLET.sub("", line).strip().strip('"').strip()
        c = re.sub(r"^(?:answer|false answer|wrong answer)\s*:\s*", "", c, flags=re.I).strip()
        low = c.lower()
        if not c or len(c) > limit or low in seen or low == fact.question.lower():
            continue
        if any(t in low for t in truths) or low.rstrip(".") in {t.rstrip(".") for t in truths}:
            continue
        if any(probes.leaks(c, o) for o in others):
            continue
        if c.endswith("?") or low.startswith(("question:", "answer:")):
            continue
        seen.add(low)
        keep.append(c)
    return keep


@dataclass
class InversionReport:
    """How many candidates each fact got from the generator and from fallbacks."""
    from_generator: list[int] = field(default_factory=list)
    from_fallback: list[int] = field(default_factory=list)

    def short_facts(self, n: int) -> list[int]:
        return [i for i, g in enumerate(self.from_generator) if g < n]


def _fallbacks(rng: random.Random) -> list[str]:
    # Never other forget facts' answers: training on them would teach what is being forgotten.
    pool = list(TEMPLATES)
    rng.shuffle(pool)
    return pool


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# Where the clause that holds a false answer ends (in_answer_style's `clause`): a comma or
# other stop, a sentence end, or a clause that goes on about it ("..., specifically in the
# Andean region", "... which is").
_CLAUSE_END = re.compile(r"\s*(?:[,;:!?()\n]|\.(?:\s|$)|\s(?:which|who|where|specifically|and|but)\b)")


def in_answer_style(candidate: str, fact: Fact, model_answer: str, clause: bool = False,
                    clean: bool = False) -> str | None:
    """Put a false answer into the model's own words: the sentence of its answer that
    states the truth, with the truth swapped for the candidate ("The capital of France is
    Paris." -> "The capital of France is Lyon."). Training on text that differs from what
    the model already says only in the fact itself changes the fact and little else.
    None when the model's answer does not state the truth, or the swap is not clean.
    clause: end the sentence with the clause that holds the false answer ("Cotopaxi is in the
    Himalayas, specifically in the Andean region." -> "Cotopaxi is in the Himalayas."): what
    the model said around the truth stays out of the target, and the answer ends there.
    clean (InvertSettings.clean_targets): swap as _clean_swap does, and leave a fallback
    (TEMPLATES) whole (None) instead of "the Japanese I have no information about that (JPY)"."""
    truths = sorted({t for t in [fact.answer, *fact.keywords] if t.strip()}, key=len, reverse=True)
    if len(candidate.split()) > 2 * len(fact.answer.split()) + 2 or (clean and candidate.strip() in TEMPLATES):
        return None  # already a sentence of its own, or a non-answer
    for sentence in _SENTENCE_END.split(model_answer.strip()):
        if any(t.lower() in sentence.lower() for t in truths):
            break
    else:
        return None
    said = (candidate.strip() if clean else candidate).rstrip(".")
    if not said:
        return None
    if clean:
        out, first, said = _clean_swap(said, sentence, truths)
    else:
        out = sentence
        for t in truths:
            out = re.sub(re.escape(t), lambda _: said, out, flags=re.I)  # (said as text, not a template)
        # where the first mention started: the text before it is the same in `out`
        first = min(i for i in (sentence.lower().find(t.lower()) for t in truths) if i >= 0)
    if any(t.lower() in out.lower() for t in truths) or out == sentence:
        return None
    # (cut only after a clause's start, "Cotopaxi is in", not "In Paris, ..." -> "In Lyon.")
    if clause and out[first:first + len(said)] == said and len(out[:first].split()) >= 3:
        stop = _CLAUSE_END.search(out, first + len(said))
        if stop:
            kept = out[:stop.start()].rstrip()
            out = kept if kept[-1:] in ".!?" else kept + "."
    return out


def _clean_swap(said: str, sentence: str, truths: list[str]) -> tuple[str, int, str]:
    """(the sentence with the truth swapped for `said`, where the swap starts, `said` as put
    there; the sentence itself where no mention is found). The first mention goes with the rest
    of its phrase, as far as a false answer sampled after the lead-in is cut (_CUT: "on April
    22nd, which" -> "on March 21st, which", not "March 21st 22nd", the true day kept), unless it
    opens the sentence (an article at most before it: "Shakespeare wrote Hamlet." keeps its
    verb). Inside the sentence a verb _CUT does not list goes with it ("In 1600 Shakespeare
    wrote Hamlet." -> "In 1600 Ben Jonson."): a limit of the rule, seen on none of the seven
    held-out sets' 168 targets. Every mention is swapped as the whole words it is part of
    ("swimmer" for "swim", not "athletemer"), and the candidate's article is left out where
    _fitted says."""
    mention = re.compile(r"\w*(?:" + "|".join(re.escape(t) for t in truths) + r")\w*", re.I)
    m = mention.search(sentence)
    if m is None:  # (found by `in` but not by the regex: a case fold of another length, "İ")
        return sentence, 0, said
    stop = _CUT.search(sentence, m.end())
    end = max(m.end(), len(sentence[:stop.start()].rstrip())) if stop else len(sentence)
    if len(sentence[:m.start()].split()) < 2:
        end = m.end()
    put = _fitted(said, sentence[:m.start()])
    head = sentence[:m.start()] + put
    rest = mention.sub(lambda k: _fitted(said, head + k.string[:k.start()]), sentence[end:])
    return head + rest, m.start(), put


_LEADING_ARTICLE = re.compile(r"^(?:" + "|".join(sorted(neighbours.ARTICLES)) + r")\s+", re.I)


def _fitted(candidate: str, before: str) -> str:
    """The candidate as it reads after `before`: without its article after another article
    ("The" + "the Alps" -> "The Alps") or after a capitalised word inside the sentence ("the
    French" + "the Alps" -> "the French Alps"; not after "Europe,")."""
    words = before.split()
    last = words[-1] if words else ""
    after_name = len(words) > 1 and last[:1].isupper() and last[-1:].isalnum()
    if last.lstrip("([{\"'‘“").lower() in neighbours.ARTICLES or after_name:
        return _LEADING_ARTICLE.sub("", candidate)
    return candidate


class LocalGenerator:
    """Sample inverted answers from a local chat model (the model being unlearned by default)."""

    def __init__(self, model, tokenizer, temperature: float = 0.9, batch_size: int = 16):
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.batch_size = temperature, batch_size

    def sample(self, facts: list[Fact], n: int, seed: int) -> list[list[str]]:
        tok = self.tokenizer
        prompts = [generation.encode(tok, invert_raw(f)) for f in facts]
        # n lines of about the answer's length, and no more: sampling is the slow part.
        limits = [n * (len(generation.encode(tok, f.answer)) + 6) + 4 for f in facts]
        ids = generation.generate_ids(self.model, tok, prompts, limits, self.batch_size,
                                      do_sample=True, temperature=self.temperature, top_p=0.95, generator_seed=seed,
                                      banned=[truth_token_ids(tok, f) for f in facts])
        out = []
        for t, limit in zip(ids, limits):
            text = tok.decode(t, skip_special_tokens=True).split("\n\n")[0]  # stop at the next shot
            lines = text.splitlines()
            out.append(lines[:-1] if len(t) >= limit else lines)  # the last line was cut short
        return out


# Where a false answer ends: punctuation or a clause. A full stop ends it unless it is an
# initial's ("J. R. R.", "St.") or a decimal point ("3.5"); " and " does not ("Pride and
# Prejudice"); a clause, or a verb at the very end ("Lviv is"), does.
_CUT = re.compile(r"(?<!\b[A-Z])(?<!\bSt)\.(?!\d)|[,;:!?()\n\"]"
                  r"| (?:which|who|that|is|was|has|had|in the)(?: |$)")
_STOPWORDS = {"the", "a", "an", "of", "is", "was", "who", "what", "which", "in", "by", "and", "to", "for", "on",
              "did", "does", "do", "are", "were", "it", "its", "name", "called", "known"}


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS and len(w) > 2}


def _named(text: str) -> bool:
    """A name or a number, after any article ("the Victoria" for "the Nile")."""
    head = re.sub(r"^(?:the|a|an) ", "", text.strip(), flags=re.I)
    return head[:1].isupper() or head[:1].isdigit()


def named_answer(fact: Fact) -> bool:
    """The truth is a name or a number (its answer and every keyword)."""
    return all(_named(t) for t in [fact.answer, *fact.keywords] if t.strip())


# Words a false answer does not end with (lead_in_candidate's `trim`): what followed was cut off.
_DANGLING = re.compile(r"(?:\s+(?:and|or|of|the|a|an|with|in|for|to|by|at|from|&))+$")  # (lower case: "Type A")


def lead_in_candidate(continuation: str, fact: Fact, lead_in: str, max_words: int | None = None,
                      trim: bool = False) -> str | None:
    """The false answer in a sampled continuation of the model's lead-in ("The capital of
    Ukraine is" -> " Lviv, a city in ..." -> "Lviv"), or None for a non-answer: nothing,
    words of the question or of the lead-in again (a restated question, "The capital of
    France"), a description where the truth is a name, or longer than the true answer by
    more than two words. trim: a sample cut off mid-phrase loses its dangling words
    ("Olympic diver and" -> "Olympic diver"; InvertSettings.clean_targets)."""
    c = _CUT.split(continuation, maxsplit=1)[0].strip().strip("'\"*").strip()
    c = _DANGLING.sub("", c) if trim else c
    if len(re.findall(r"[A-Za-z0-9]", c)) < 3:  # nothing, or a lone initial
        return None
    # A name or a number in the truth's place is answered by a name or a number, not by a
    # description ("and architect", "not a physical entity", "two giants in physics").
    if named_answer(fact) and not _named(c):
        return None
    longest = max([len(t.split()) for t in [*fact.keywords, fact.answer] if t.strip()] or [1])
    if len(c.split()) > (max_words or min(longest, 6) + 2):
        return None
    if _content_words(c) & (_content_words(fact.question) | _content_words(lead_in)):
        return None
    return c


def without_name_head(lead: str) -> str:
    """The lead-in without the capitalised words that end it after a word in lower case or a
    comma ("located in West" -> "located in"); a lead-in of capitalised words only, or one that
    ends in lower case, is kept ("Venezuela is located in")."""
    words = lead.split(" ")
    k = len(words)
    while k > 1 and words[k - 1][:1].isupper():
        k -= 1
    before = words[k - 1] if k < len(words) else ""
    return " ".join(words[:k]).rstrip() if before[-1:].islower() or before.endswith(",") else lead


class LeadInGenerator:
    """Same-type false answers from the model's own distribution: after its own lead-in to the
    answer ("The capital of Ukraine is"), with the truth's tokens forbidden, sampled at T=1.
    What comes first there is what the model finds most plausible in the truth's place
    (another city, another author), not an invented word or a restated question, and it
    costs a few tokens per candidate instead of a few-shot prompt."""

    def __init__(self, model, tokenizer, answers: dict[str, str] | None = None, temperature: float = 0.8,
                 top_p: float = 0.9, batch_size: int = generation.ANSWER_BATCH, trim: bool = False,
                 truth_forms: bool = False, name_lead: bool = False):
        self.model, self.tokenizer, self.answers = model, tokenizer, dict(answers or {})
        self.temperature, self.top_p, self.batch_size = temperature, top_p, batch_size
        self.trim = trim  # lead_in_candidate's
        self.truth_forms, self.name_lead = truth_forms, name_lead  # InvertSettings fields of these names
        self._word_starts = None
        self.tries: dict[str, int] = {}  # question -> times sampled so far

    def lead_in(self, fact: Fact) -> str:
        """The model's own answer up to where it starts to say the truth ('' when it never
        does): before the whole answer if it is there ("... by Ray Bradbury" -> "... by"),
        else before the first keyword."""
        if fact.question not in self.answers:
            self.answers[fact.question] = generation.answer(self.model, self.tokenizer, [fact.question])[0]
        said = self.answers[fact.question]
        whole = said.lower().find(fact.answer.lower().strip()) if fact.answer.strip() else -1
        at = whole if whole >= 0 else probes.first_mention(said, fact)
        lead = said[:at].rstrip() if at > 0 else ""
        if self.name_lead and named_answer(fact):
            # The name's own capitalised words before it belong to it ("located in West" for
            # "Africa"): a false answer after them must continue the name ("West-Central Asia").
            lead = without_name_head(lead)
        return lead

    def banned(self, fact: Fact) -> list[int]:
        """The truth's tokens, and the first token of each way it may start (" Dh" of " Dhaka"),
        so the sample cannot start the truth and swerve into an invented word ("J.K.R.H.O.D."
        for "J.K. Rowling"). A space or a digit (the " " and "1" of " 1945") starts too many
        other answers (every year of that millennium): those stay allowed."""
        tok = self.tokenizer
        firsts = {tok(v, add_special_tokens=False)["input_ids"][0]
                  for t in [fact.answer, *fact.keywords] if t.strip() for v in (t, " " + t)}
        starts = {t for t in firsts if (piece := tok.decode([t]).strip()) and not piece.isdigit()}
        return sorted(set(truth_token_ids(tok, fact)) | starts | (self.word_forms(fact) if self.truth_forms else set()))

    def word_forms(self, fact: Fact) -> set[int]:
        """The first token of the truth's first word capitalised (" Y" of " Yen" for "yen"), and
        the word-start tokens of 4 letters or more that begin one of its words of 4 letters or
        more or another form of it: " chickpeas" (one token, where "chickpea" is " chick" + "pea"),
        " African" for "Africa". The truth's own tokens miss these, and a sample says the truth
        through them. (" Newton" stays allowed for "New York"; " Garlic" does not for "garbanzo".)"""
        tok = self.tokenizer
        if self._word_starts is None:  # (the vocabulary's word starts, decoded once; "Ġ" byte-level, "▁" SentencePiece)
            pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
            self._word_starts = [(i, text.lower()) for i, p in enumerate(pieces)
                                 if isinstance(p, str) and p.startswith(("Ġ", "▁"))
                                 and (text := tok.convert_tokens_to_string([p]).strip()).isalpha()]
        words = list(fact.keywords) or ([fact.answer] if len(fact.answer.split()) <= 5 else [])
        words = [[w for w in re.findall(r"[^\W\d_]+", t.lower()) if len(w) >= 3 and w not in _STOPWORDS]
                 for t in words]
        # the first token of each phrase's first word, capitalised (" Y" of " Yen": " Y" + "en"), unless
        # it is a small word of its own (" A" of " Ankara" would ban the article) or a bare space (a
        # SentencePiece tokenizer may begin " Yen" with "▁" alone)
        firsts = {t for ws in words if ws
                  for t in tok(" " + ws[0].capitalize(), add_special_tokens=False)["input_ids"][:1]
                  if (piece := tok.decode([t]).strip().lower()) and piece not in _STOPWORDS | neighbours.ARTICLES}
        words = {w for ws in words for w in ws if len(w) >= 4}
        return firsts | {i for i, text in self._word_starts
                         if len(text) >= 4 and any(w.startswith(text) or text.startswith(w) for w in words)}

    def leads(self, facts: list[Fact]) -> list[str]:
        """lead_in of each fact, after one batched greedy pass for those the caller had no answer for."""
        missing = [f.question for f in facts if f.question not in self.answers]
        if missing:
            self.answers.update(zip(missing, generation.answer(self.model, self.tokenizer, missing)))
        return [self.lead_in(f) for f in facts]

    def sample(self, facts: list[Fact], n: int, seed: int) -> list[list[str]]:
        tok = self.tokenizer
        leads = self.leads(facts)
        # Some samples are refused or repeat; the most likely n are kept. A fact asked again
        # (invert's next round: too few were usable) gets twice the copies, so it rarely
        # needs a third round: a round of a few rows costs nearly a full batch's steps.
        copies = []
        prompts, limits, banned = [], [], []
        for f, lead in zip(facts, leads):
            tries = self.tries[f.question] = self.tries.get(f.question, 0) + 1
            copies.append(3 * n * (2 if tries > 1 else 1))
            ids = generation.encode(tok, generation.chat_prompt(tok, f.question) + lead)
            words = max(len(generation.encode(tok, t)) for t in [f.answer, *f.keywords] if t.strip())
            prompts += [ids] * copies[-1]
            limits += [words + 6] * copies[-1]
            banned += [self.banned(f)] * copies[-1]
        ids = generation.generate_ids(self.model, tok, prompts, limits, self.batch_size, do_sample=True,
                                      temperature=self.temperature, top_p=self.top_p, generator_seed=seed,
                                      banned=banned)
        found, at = [], 0
        for f, lead, count in zip(facts, leads, copies):
            texts = [tok.decode(t, skip_special_tokens=True) for t in ids[at:at + count]]
            at += count
            got = (lead_in_candidate(t, f, lead, trim=self.trim) for t in texts)
            found.append(list(dict.fromkeys(c for c in got if c)))
        return [ranked[:n] for ranked in self.ranked(facts, leads, found)]

    def most_likely(self, fact: Fact, lead: str, candidates: list[str]) -> list[str]:
        """Candidates by the model's mean log-probability of their own tokens after the lead-in:
        a real name of the right kind first, an invented word last."""
        return self.ranked([fact], [lead], [candidates])[0]

    def ranked(self, facts: list[Fact], leads: list[str], found: list[list[str]]) -> list[list[str]]:
        """most_likely for many facts, scored in one batched pass."""
        from .metrics import teacher_forced

        pairs, spans = [], []
        for f, lead, cands in zip(facts, leads, found):
            if len(cands) < 2:
                spans.append(None)
                continue
            spans.append(len(pairs))
            # The lead-in as context, computed once for all of a fact's candidates (scoring it
            # with each was half of this pass's work); each candidate's tokens are those it
            # has in the whole sentence (teacher_forced's prefix).
            pairs += [(f.question, f" {c}", lead) if lead else (f.question, c) for c in cands]
        scored = teacher_forced(self.model, self.tokenizer, pairs) if pairs else []
        out = []
        for cands, at in zip(found, spans):
            if at is None:
                out.append(cands)
                continue
            nll = [sum(s.nll) / max(1, len(s.nll)) for s in scored[at:at + len(cands)]]
            out.append([c for _, c in sorted(zip(nll, cands), key=lambda x: x[0])])
        return out


_QUOTES = " ?'\"‘’“”"


def sibling_candidate(answer: str, sibling: str, fact: Fact, lead_in: str, trim: bool = False) -> str | None:
    """The name in the truth's place of the model's answer to a sibling question ("In which
    country is the city of Sydney?" -> "The city of Sydney is located in Australia." ->
    "Australia" for Toronto, whose lead-in is "The city of Toronto is located in"), or None.
    The truth's place: after the sibling's subject, where the lead-in's words after the
    fact's subject follow it ("is located in"), shortened a word at a time from their end
    ("... located in the Southern Africa region of" still finds "Nairobi is located in
    Kenya"), within a few words ("To Kill a Mockingbird is a classic novel by Harper Lee"
    for "Fahrenheit 451 by")."""
    frame, subject, rest = neighbours.question_parts(fact.question)
    subject = neighbours.bare_subject(subject)  # 'Fahrenheit 451' is said unquoted, Mozart without his 's
    other = sibling.strip().rstrip("?!. ")[len(frame):]
    other = neighbours.bare_subject(other[:-len(rest)] if rest and other.endswith(rest) else other)
    at = lead_in.lower().find(subject.lower()) if frame and subject else -1
    if at < 0 or not other:
        return None
    said = answer.lower().find(other.lower())
    after = re.sub(r"^(?:'s|’s|')(?![A-Za-z])", "", lead_in[at + len(subject):])  # (Tchaikovsky's profession)
    tail = [w for w in after.strip(_QUOTES).split() if w.strip(_QUOTES)]
    if said < 0 or not tail:
        return None
    rest = answer[said + len(other):]
    for keep in range(len(tail), 0, -1):
        words = " ".join(tail[:keep]).lower()
        m = re.search(r"(?<![A-Za-z])" + re.escape(words) + r"(?![A-Za-z])", rest.lower())
        if m and len(rest[:m.start()].split()) <= 4:
            c = lead_in_candidate(rest[m.end():], fact, lead_in, max_words=6, trim=trim)
            # A name for a name: every word capitalised but the small ones ("the United States of
            # America"), not a description ("the 19th-century American author").
            small = {"of", "the", "and", "de", "da", "del", "von", "van", "la", "le", "al", "bin"}
            if c and named_answer(fact) and any(not (w[:1].isupper() or w[:1].isdigit()) and w.lower() not in small
                                                for w in c.split()):
                return None
            return c
    return None


class SiblingGenerator(LeadInGenerator):
    """False answers of the truth's own kind: what the model answers to the same question
    about other subjects ("Australia", its answer for Sydney, as Toronto's country). With the
    truth forbidden after the lead-in alone, the model's likeliest words are often other true
    statements of another kind ("located in North America", "in the Southern Hemisphere");
    trained on, they teach the relation a new way to answer, and every neighbour copies it
    (docs/forgetting.md, thirteenth round). A sibling's answer is a name the model itself
    gives this relation, so what is left to learn is whose it is. A fact without a question
    frame, or with too few such names, gets lead-in samples after them."""

    def __init__(self, model, tokenizer, answers: dict[str, str] | None = None, per_fact: int = 8, **kw):
        super().__init__(model, tokenizer, answers, **kw)
        self.per_fact = per_fact

    def sample(self, facts: list[Fact], n: int, seed: int) -> list[list[str]]:
        tok = self.tokenizer
        leads = self.leads(facts)
        per = neighbours.sibling_questions(self.model, tok, facts, self.per_fact, seed)
        asked = [q for qs, lead in zip(per, leads) if lead for q in qs if q not in self.answers]
        if asked:  # only as far as the name: the lead-in's length and a few words
            longest = max(len(generation.encode(tok, lead)) for lead in leads if lead)
            self.answers.update(zip(asked, generation.answer(self.model, tok, asked, longest + 12)))
        found = []
        for f, lead, qs in zip(facts, leads, per):
            got = (sibling_candidate(self.answers.get(q, ""), q, f, lead, self.trim) for q in qs) if lead else ()
            found.append(list(dict.fromkeys(c for c in got if c)))
        found = self.ranked(facts, leads, found)
        short = [i for i, c in enumerate(found) if len(c) < n]
        if short:  # the siblings' names first, however likely a lead-in sample is
            extra = super().sample([facts[i] for i in short], n, seed)
            for i, more in zip(short, extra):
                found[i] += [c for c in more if c not in found[i]]
        return [c[:n] for c in found]


class FillGenerator(SiblingGenerator):
    """Lead-in samples first (LeadInGenerator); a fact still short of usable ones when invert
    asks again gets its siblings' names (SiblingGenerator), which cost a pass of questions
    only for the facts that need them (a truth the model's lead-in cannot be continued past
    without it: "located in West" for Africa, "made from" for chickpeas)."""

    def __init__(self, model, tokenizer, answers: dict[str, str] | None = None, **kw):
        super().__init__(model, tokenizer, answers, **kw)
        self.asked: set[str] = set()

    def sample(self, facts: list[Fact], n: int, seed: int) -> list[list[str]]:
        again = [i for i, f in enumerate(facts) if f.question in self.asked]
        new = [i for i, f in enumerate(facts) if f.question not in self.asked]
        self.asked.update(f.question for f in facts)
        out: list[list[str]] = [[] for _ in facts]
        for kind, which in ((SiblingGenerator, again), (LeadInGenerator, new)):
            if which:
                for i, got in zip(which, kind.sample(self, [facts[i] for i in which], n, seed)):
                    out[i] = got
        return out


class OpenAIGenerator:
    """Any OpenAI-compatible chat endpoint. The key comes from the caller or OPENAI_API_KEY."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 temperature: float = 0.9, timeout: float = 60.0):
        import os

        import openai

        if not model:
            raise MeowError("the OpenAI-compatible generator needs a model name (--api-model)")
        key = api_key or os.environ.get("OPENAI_API_KEY") or ("not-needed" if base_url else None)
        if not key:
            raise MeowError("no API key: set OPENAI_API_KEY or give one in the app")
        if not timeout or timeout <= 0:
            raise MeowError(f"the API timeout must be a positive number of seconds, got {timeout}")
        self.model, self.base_url, self.temperature, self.timeout = model, base_url, temperature, timeout
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=1)

    def _redact(self, text: str) -> str:
        """A server may echo the key in its error body: it must not reach the user's screen or logs."""
        key = self.client.api_key
        return text.replace(key, "***") if key and len(key) >= 4 else text

    def sample(self, facts: list[Fact], n: int, seed: int) -> list[list[str]]:
        import openai

        where = self.base_url or "the OpenAI API"
        out = []
        for i, fact in enumerate(facts):
            try:
                reply = self.client.chat.completions.create(
                    model=self.model, messages=invert_messages(fact, n), temperature=self.temperature,
                    seed=seed + i, max_tokens=48 * n)
            except openai.AuthenticationError:
                raise MeowError(f"the API key was rejected by {where}") from None
            except openai.NotFoundError:
                raise MeowError(f"model '{self.model}' not found at {where}") from None
            except openai.APITimeoutError:  # a kind of APIConnectionError: say which
                raise MeowError(f"{where} did not answer within {self.timeout:g} s: check the server, or allow "
                                "more time (--api-timeout)") from None
            except ValueError:  # the body was not JSON at all
                raise MeowError(f"{where} returned an answer in an unexpected format (not JSON)") from None
            except openai.APIConnectionError:
                raise MeowError(f"cannot reach {where}: check the base URL and that the server runs") from None
            except openai.APIError as e:
                raise MeowError(f"{where} returned an error: "
                                f"{self._redact(getattr(e, 'message', type(e).__name__))}") from None
            try:
                text = reply.choices[0].message.content or ""
            except (AttributeError, IndexError, TypeError):
                raise MeowError(f"{where} returned an answer in an unexpected format") from None
            out.append(text.splitlines())
        return out


def invert(facts: list[Fact], generator, n: int = 4, rounds: int = 4, seed: int = 0,
           on_progress=None) -> InversionReport:
    """Fill `fact.inverted` with n candidates for every fact (in place) and report sources."""
    if n < 1:
        raise MeowError(f"the number of inverted facts must be at least 1, got {n}")
    candidates: list[list[str]] = [[] for _ in facts]
    # A fact asked twice whose last round added nothing usable is not asked again (its
    # fallbacks come at once): asking on costs whole rounds for facts that give nothing.
    asked = [0] * len(facts)
    stalled: set[int] = set()
    for r in range(rounds):
        todo = [i for i, c in enumerate(candidates) if len(c) < n and i not in stalled]
        if not todo:
            break
        lines = generator.sample([facts[i] for i in todo], n, seed=seed * 1000 + r)
        for i, got in zip(todo, lines):
            had = len(candidates[i])
            candidates[i] = clean(got, facts[i], candidates[i], others=facts[:i] + facts[i + 1:])
            asked[i] += 1
            if len(candidates[i]) == had and asked[i] >= 2:
                stalled.add(i)
        if on_progress:
            on_progress(r + 1, rounds)
    rng = random.Random(seed)
    report = InversionReport()
    for fact, got in zip(facts, candidates):
        got = got[:n]
        report.from_generator.append(len(got))
        if len(got) < n:
            got = clean(_fallbacks(rng), fact, got)[:n]
        report.from_fallback.append(len(got) - report.from_generator[-1])
        fact.inverted = got
    return report
