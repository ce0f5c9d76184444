"""The whole unlearning run: invert -> MEMO -> select -> train -> probe -> save.

Used by the CLI's `unlearn` and by the web app. The run folder is built under a hidden
temporary name and renamed into place at the very end, so a failed, cancelled or killed
run never leaves a half-written RUN_DIR behind.

RUN_DIR/
  model/        a standard Hugging Face checkpoint (LoRA merged)
  adapter/      with LoRA only: the PEFT adapter before merging (adapter_config.json, adapter_model.safetensors)
  run.json      method, settings, seed, timings, per-step losses, hit rates (numbers only)
  facts.jsonl   the forget facts with their inverted answers, MEMO scores and selection
  probes.json   the greedy answers before and after, per question (forget, retain, and the
                shipped everyday questions asked on every run)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import invert as invert_mod
from . import distributed, general, generation, memo, methods, models, probes, select
from . import neighbours as neighbours_mod
from .answer_cache import AnswerCache
from .drafts import Drafts
from .errors import MeowError, NotApplicable
from .facts import Fact, write_jsonl
from .progress import Stages
from .train import TrainConfig, Trainer, check_edit_first, check_null_space, check_precondition, check_subject_only


@dataclass
class InvertSettings:
    n: int = 4                     # inverted candidates per fact
    # lead_in (default): the model continues its own lead-in to the answer with the truth
    # forbidden (same-type answers); local: a few-shot prompt to the model; openai: an API.
    generator: str = "lead_in"
    generator_model: str | None = None   # local generator: None = the model being unlearned
    base_url: str | None = None
    api_model: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never written anywhere
    api_timeout: float = 60.0      # seconds to wait for one API answer
    # Train on the selected false answers put in the model's own words ("The capital of
    # France is Lyon." rather than "Lyon"): the model then changes the fact, not its style.
    answer_style: bool = True
    # With answer_style: the sentence ends with the clause that holds the false answer, so
    # what the model said around the truth ("..., specifically in the Andean region") is not
    # trained on and the answer stops after the false one (docs/forgetting.md, 18th round).
    answer_clause: bool = False
    # Clean false answers: a sample cut off mid-phrase loses its dangling words, and in
    # answer_style the truth's whole phrase and whole words are swapped and a fallback stays
    # whole (not "athletemer", "March 21st 22nd", "the Japanese I have no information about
    # that (JPY)"). Off: it cost paraphrase depth on the held-out sets (docs/forgetting.md, 23rd round).
    clean_targets: bool = False
    # Lead-in sampling (lead_in, siblings, lead_in_siblings): also forbid the tokens that begin
    # the truth's words or another form of them (" chickpeas", " African", the " Y" of " Yen"),
    # which the truth's own tokens miss. Off: docs/forgetting.md, 24th round.
    truth_forms: bool = False
    # Lead-in sampling of a name: the lead-in ends before the name's own capitalised words
    # ("located in" rather than "located in West" for "Africa"). Off: as truth_forms.
    name_lead: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("api_key")
        return d


@dataclass
class SelectSettings:
    top_k: int = 3
    strategy: str = "largest"
    memo_mode: str = "suffix"
    memo_stride: int = 5
    memo_length: str | int = "target"
    # Pass over a false answer already chosen for another fact (select.select_distinct):
    # one name learned for several questions is learned as an answer to their relation.
    distinct: bool = False


GENERATORS = ("local", "lead_in", "siblings", "lead_in_siblings", "openai")


def make_generator(settings: InvertSettings, loaded: models.LoadedModel | None = None,
                   answers: dict[str, str] | None = None):
    """The inverted-answer generator the settings name; `answers` (question -> the model's
    greedy answer), when known, spare lead_in a generation pass."""
    if settings.generator == "openai":
        return invert_mod.OpenAIGenerator(settings.api_model, settings.base_url, settings.api_key,
                                          timeout=settings.api_timeout)
    if settings.generator not in GENERATORS:
        raise MeowError(f"generator must be one of {', '.join(GENERATORS)}, got '{settings.generator}'")
    if loaded is None or (settings.generator_model and settings.generator_model != loaded.name):
        loaded = models.load_shared(settings.generator_model)
        answers = None  # another model's answers: it finds its own lead-ins
    kinds = {"lead_in": invert_mod.LeadInGenerator, "siblings": invert_mod.SiblingGenerator,
             "lead_in_siblings": invert_mod.FillGenerator}
    if settings.generator in kinds:
        return kinds[settings.generator](loaded.model, loaded.tokenizer, answers, trim=settings.clean_targets,
                                         truth_forms=settings.truth_forms, name_lead=settings.name_lead)
    return invert_mod.LocalGenerator(loaded.model, loaded.tokenizer)


def score_and_select(loaded: models.LoadedModel, facts: list[Fact], settings: SelectSettings,
                     seed: int = 0) -> list[dict]:
    """MEMO of each fact's answer and inverted candidates; keep the top-k (in place)."""
    scores = memo.score_facts(loaded.model, loaded.tokenizer, facts, settings.memo_mode,
                              settings.memo_stride, settings.memo_length)
    out, taken = [], []
    for i, (f, (answer_score, cand)) in enumerate(zip(facts, scores)):
        if not cand:
            chosen = []
        elif settings.distinct:
            names = [select.answer_name(c, f.extra.get("answer_prefix", "")) for c in f.inverted]
            chosen = select.select_distinct(cand, names, taken, settings.top_k, settings.strategy, seed + i)
            taken += [names[j] for j in chosen]
        else:
            chosen = select.select(cand, settings.top_k, settings.strategy, seed + i)
        out.append({"memo_answer": answer_score, "memo_inverted": cand, "candidates": list(f.inverted),
                    "selected": chosen})
        f.inverted = [f.inverted[j] for j in chosen]
    return out


def capped_note(selection: list[dict], settings: SelectSettings) -> str | None:
    """Say so when top-k asked for more inverted answers than a fact has (all of them are used)."""
    short = [(i, len(s["candidates"])) for i, s in enumerate(selection, start=1)
             if len(s["candidates"]) < settings.top_k]
    if not short or settings.strategy == "all":
        return None
    return (f"top-k is {settings.top_k}, but {len(short)} fact(s) have fewer inverted answers "
            f"(fact {short[0][0]}: {short[0][1]}): all of theirs are used")


def anchor_facts(loaded: models.LoadedModel, forget: list[Fact], count: int, neighbours: int = 0,
                 siblings: int = 0, seed: int = 0, cache: AnswerCache | None = None,
                 sibling_shots: bool = False, sibling_sentences: int = 0) -> list[Fact]:
    """General prompts (TrainConfig.anchors) and the forget questions' nearest neighbour
    questions (TrainConfig.neighbours) and their siblings (TrainConfig.siblings: the same
    question about other subjects, asked as TrainConfig.sibling_shots says) with the original
    model's own answers, leaving out any that mention a fact being forgotten. cache: answers
    the shipped ones (prompts and neighbours, marked extra["shipped"]), not the siblings,
    which are made from the user's questions; sibling_sentences: where above 0, the siblings'
    answers end after that many sentences."""
    from .facts import read_lines

    prompts = read_lines(general.ANCHOR_PROMPTS)[:count] if count > 0 else []
    if neighbours > 0 and forget:
        # Shared out over the facts, at least 2 each: a few facts get many neighbours each,
        # which is what holds a whole family of questions (all "capital of ...") in place.
        per_fact = max(2, -(-neighbours // len(forget)))
        embed_pool = None
        if cache:  # the shipped pool's vectors, computed once per model (answer_cache.vectors)
            def embed_pool(pool):
                return cache.vectors(loaded.model, "neighbour_pool", pool, lambda texts: neighbours_mod.embed(
                    loaded.model, loaded.tokenizer, texts), Path(neighbours_mod.__file__).read_bytes())
        near = neighbours_mod.nearest(loaded.model, loaded.tokenizer, [f.question for f in forget],
                                      read_lines(neighbours_mod.POOL), per_fact, embed_pool)
        prompts += [q for q in near if q not in prompts]
    shipped = len(prompts)
    if siblings > 0 and forget:
        made = neighbours_mod.siblings(loaded.model, loaded.tokenizer, forget, siblings, seed, shots=sibling_shots)
        prompts += [q for q in made if q not in prompts]
    if not prompts:
        return []
    answers = cache.answer(loaded.model, loaded.tokenizer, prompts[:shipped]) if cache and shipped else []
    if len(answers) < len(prompts):  # the siblings (with no cache, the shipped ones first, in the same pass)
        answers += sibling_answers(loaded, prompts[len(answers):], sibling_sentences, shipped - len(answers))
    kept = []
    for i, (q, a) in enumerate(zip(prompts, answers)):
        if a and not any(probes.leaks(q + " " + a, f) for f in forget):
            # (extra["shipped"]: a shipped question, whose rows a method may keep in the cache; a sibling is not)
            kept.append(Fact(q, a, extra={"shipped": True} if i < shipped else {}))
        elif a and cache and i < shipped:
            cache.left_out.append((q, a))
    return kept


def sibling_answers(loaded: models.LoadedModel, questions: list[str], sentences: int = 0, first: int = 0) -> list[str]:
    """The original's greedy answers to the questions, those from `first` on (the siblings)
    each ended after `sentences` sentences (0: as long as the model's own answer)."""
    said = [0] * len(questions)

    def done(i, text) -> bool:  # (asked once at each sentence's end)
        said[i] += i >= first
        return i >= first and said[i] >= sentences

    return generation.answer(loaded.model, loaded.tokenizer, questions, done=done if sentences > 0 else None)


def own_answers(facts: list[Fact], probe: dict | None, split: bool = False) -> list[Fact]:
    """Copies of the facts whose answer is the model's own greedy answer where that answer
    states the fact (see TrainConfig.own_answers); the others keep the reference answer.
    split=True moves the words before the fact's first mention into extra["answer_prefix"]."""
    if not facts or probe is None:
        return facts
    said = {r["fact"]: r["answer"] for r in probe["rows"] if r["kind"] == "question" and r["leak"]}
    out = []
    for i, f in enumerate(facts):
        answer, extra = said.get(i, f.answer), dict(f.extra)
        if split and i in said:
            at = probes.first_mention(answer, f)
            if at > 0:
                # Cut before the space, so the fact keeps the token it has in the whole sentence.
                prefix = answer[:at].rstrip()
                answer, extra["answer_prefix"] = answer[len(prefix):], prefix
        out.append(Fact(**{**asdict(f), "answer": answer, "extra": extra}))
    return out


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def _prepare_out_dir(out_dir: Path) -> Path:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MeowError(f"{out_dir} already exists and is not empty: choose a new run folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir.parent)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    return partial


def remove_stale_partials(folder: Path, depth: int = 1) -> list[Path]:
    """Remove the hidden partial run folders that killed runs left in `folder` (and `depth`-1
    levels below): SIGKILL skips the clean-up in `unlearn`. Folders of live runs stay."""
    removed = []
    for pattern in ["*/" * d + ".*.partial-*" for d in range(depth)]:
        for stale in Path(folder).glob(pattern):
            if stale.is_dir() and not _alive(stale.name.rsplit("-", 1)[-1]):
                shutil.rmtree(stale, ignore_errors=True)
                removed.append(stale)
    return removed


def _alive(pid: str) -> bool:
    """Whether the process that owns a partial folder still runs (then it is not ours to remove)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def save_checkpoint(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def save_adapter(adapter: tuple, folder: Path) -> None:
    """The LoRA adapter as PEFT writes it: PeftModel.from_pretrained(base, folder) loads it."""
    from safetensors.torch import save_file

    config, weights = adapter
    config.save_pretrained(folder)
    save_file(weights, folder / "adapter_model.safetensors", metadata={"format": "pt"})


def _check_job(forget, method: str, retain, config, inv, sel):
    """What can be refused before any work starts (the model name is checked by the caller)."""
    method_obj = methods.get(method)
    distributed.check_method(method_obj, distributed.launched_size())
    config = config or TrainConfig(**method_obj.defaults)
    config.check()
    method_obj.check(config)  # (first: where the default cannot run, its fallback's checks are the ones that count)
    check_null_space(method_obj, config)
    check_precondition(method_obj, config)
    check_edit_first(method_obj, config, distributed.launched_size())
    check_subject_only(method_obj, config)
    if method_obj.needs_inverted and sel.top_k > inv.n and not all(f.inverted for f in forget):
        raise MeowError(f"top-k ({sel.top_k}) is larger than the number of inverted facts per fact ({inv.n})")
    if method_obj.needs_retain and not retain:
        raise MeowError(f"method '{method}' needs a retain set (--retain FILE)")
    return method_obj, config


def configured(method: str, overrides: dict | None = None) -> TrainConfig:
    """The method's defaults with the user's own settings on top."""
    return TrainConfig(**{**methods.get(method).defaults, **(overrides or {})})


def fallback(method: str, why: NotApplicable, overrides: dict | None) -> tuple[str, TrainConfig, str]:
    """Where the default `method` cannot run here and names a method to run instead
    (Method.falls_back_to): that one, configured with the user's settings (`overrides`; None:
    the method or its whole configuration was chosen, so nothing is swapped), and a note that
    says why. Else `why` is raised."""
    other = methods.get(method).falls_back_to
    if not other or overrides is None:
        raise why
    kept = {k: v for k, v in overrides.items() if k not in methods.get(method).not_carried}
    note = f"{method} does not apply here, so {other} ran instead: {why}"
    if kept:  # (said, as a learning rate given with one method in mind may not suit the other)
        note += f" (with the settings given: {', '.join(f'{k} {v}' for k, v in kept.items())})"
    return other, configured(other, kept), note


def method_for(method: str | None, overrides: dict | None = None, model=None) -> tuple[str, TrainConfig]:
    """The method `unlearn` will run, and its configuration: `method`; or, for None, the default
    or its fallback where the settings, the processes or the model (when given) rule it out
    (what a time estimate needs). An explicit method that cannot run raises NotApplicable."""
    name = method or methods.DEFAULT
    config, obj = configured(name, overrides), methods.get(name)
    try:
        distributed.check_method(obj, distributed.launched_size())
        obj.check(config)
        if model is not None:
            obj.check_model(model, config)
    except NotApplicable as why:
        name, config, _ = fallback(name, why, (overrides or {}) if method is None else None)
    return name, config


def probe_sets(model, tokenizer, forget: list[Fact] | None, retain: list[Fact] | None, everyday: list[Fact],
               cache: AnswerCache | None = None, before: bool = False, retain_read: bool = True,
               record: Drafts | None = None, drafts: Drafts | None = None) -> dict:
    """Greedy answers on the forget set (with paraphrases), the retain set and the everyday
    questions (these, shipped, from `cache`: give one only for the original model). Answers
    end once they leak (probes.probe's stop_once_leaked) unless their words are used: before
    the run, the forget questions' (own_answers' targets, the inversion's answer style) and,
    where the method may read the retain set (`retain_read`), the retain questions'.
    record: the answers decoded are kept there (the original's, before a run); drafts: the
    answers are checked against those (after a run; the same answers: drafts.py)."""
    every, ProbeSet = probes.KINDS, probes.ProbeSet
    sets = {"forget": ProbeSet(forget, True, ("paraphrase",) if before else every) if forget is not None else None,
            "retain": ProbeSet(retain, False, () if before and retain_read else every) if retain else None,
            "everyday": None if cache else ProbeSet(everyday, False, every)}
    asked = {k: ps for k, ps in sets.items() if ps is not None}
    # One generation pass for all of them (probes.probe_many); the cached answers apart.
    out = dict(zip(asked, probes.probe_many(model, tokenizer, list(asked.values()), record=record,
                                            drafts=drafts))) if asked else {}
    if cache:
        out["everyday"] = probes.probe(model, tokenizer, everyday, paraphrases=False, answer=cache.answer)
    return {k: out.get(k) for k in ("forget", "retain", "everyday")}


def invert_and_select(loaded, forget: list[Fact], inv: InvertSettings, sel: SelectSettings, seed: int,
                      own_answers_before: dict, stages, emit) -> tuple[list[dict], list[str]]:
    """Inverted answers for the facts that have none, MEMO selection, then the answer style
    (in place on `forget`). Returns the selection rows and the notes for run.json."""
    own = {forget[r["fact"]].question: r["answer"] for r in own_answers_before["rows"] if r["kind"] == "question"}
    if not all(f.inverted for f in forget):
        with stages("invert"):
            report = invert_mod.invert([f for f in forget if not f.inverted], make_generator(inv, loaded, own),
                                       inv.n, seed=seed)
        emit({"type": "inverted", "from_generator": report.from_generator, "from_fallback": report.from_fallback})
    with stages("memo", key="memo_select"):
        selection = score_and_select(loaded, forget, sel, seed)
    notes = []
    if capped := capped_note(selection, sel):
        notes.append(capped)
        emit({"type": "note", "text": capped})
    if inv.answer_style:
        for f in forget:
            f.inverted = [invert_mod.in_answer_style(c, f, own[f.question], inv.answer_clause, inv.clean_targets) or c
                          for c in f.inverted]
    return selection, notes


def _rates(p: dict | None) -> dict | None:
    return None if p is None else {"hit_rate": p["hit_rate"], "paraphrase_hit_rate": p["paraphrase_hit_rate"]}


def run_record(method: str, loaded, forget, retain, config: TrainConfig, inv: InvertSettings, sel: SelectSettings,
               seconds: dict, result, before: dict, after: dict, notes: list[str]) -> dict:
    """run.json: numbers and settings only (no fact text)."""
    return {
        "method": method,
        "model": loaded.name,
        "n_forget": len(forget),
        "n_retain": len(retain or []),
        "settings": {"train": config.to_dict(), "invert": inv.to_dict(), "select": asdict(sel)},
        "seed": config.seed,
        "device": loaded.device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "timings": seconds,
        "seconds_total": round(sum(seconds.values()), 2),
        "steps": result.steps,
        "probes": result.probes,
        "stopped_early": result.stopped_early,
        "method_info": result.info,
        "summary": {"before": {"forget": _rates(before["forget"]), "retain": _rates(before["retain"])},
                    "after": {"forget": _rates(after["forget"]), "retain": _rates(after["retain"])},
                    "everyday": probes.kept_lost(before["everyday"], after["everyday"])},
        "notes": notes,
    }


def write_run_files(folder: Path, run: dict, forget: list[Fact], selection: list[dict] | None,
                    before: dict, after: dict) -> None:
    """run.json, facts.jsonl (facts with their inverted answers and selection) and probes.json."""
    _write_json(folder / "run.json", run)
    write_jsonl([{**f.to_dict(), **(selection[i] if selection else {})} for i, f in enumerate(forget)],
                folder / "facts.jsonl")
    rows = {k: p and p["rows"] for k, p in (("before", before["forget"]), ("after", after["forget"]),
                                            ("retain_before", before["retain"]), ("retain_after", after["retain"]),
                                            ("everyday_before", before["everyday"]),
                                            ("everyday_after", after["everyday"]))}
    _write_json(folder / "probes.json", rows)


def unlearn(forget: list[Fact], out_dir, method: str | None = None, model: str | None = None,
            retain: list[Fact] | None = None, config: TrainConfig | None = None,
            invert_settings: InvertSettings | None = None, select_settings: SelectSettings | None = None,
            loaded: models.LoadedModel | None = None, on_event=None, should_stop=None,
            device: str | None = None, overrides: dict | None = None) -> dict | None:
    """Run one unlearning job end to end and return the contents of run.json.

    method: a registered name, or None for the default (methods.DEFAULT), which where it
    cannot run (NotApplicable: LoRA for meow_patch, a model without gated MLPs...) gives way
    to its falls_back_to, configured with the same `overrides`; run.json's notes say so.
    config: the whole training configuration; or None, and `overrides`, the user's own
    settings over the method's defaults.

    Under `accelerate launch` with N processes (distributed.py) every process trains on its
    shard of each batch; only the main one does the rest and returns run.json, the others
    return None."""
    inv = invert_settings or InvertSettings()
    sel = select_settings or SelectSettings()
    if config is not None and (overrides is not None or method is None):
        raise ValueError("give a method and its whole config, or the overrides on the method's defaults")
    # Only the default gives way to its fallback: a method asked for by name runs, or says why not.
    swap, method = (overrides or {}) if method is None else None, method or methods.DEFAULT
    notes = []
    try:
        method_obj, config = _check_job(forget, method, retain, config or configured(method, overrides), inv, sel)
    except NotApplicable as why:
        method, config, note = fallback(method, why, swap)
        notes.append(note)
        method_obj, config = _check_job(forget, method, retain, config, inv, sel)
    if loaded is None:
        models.resolve(model)  # a bad model name fails here, before anything is written
    out_dir = Path(out_dir)
    forget = [Fact(**{**asdict(f), "inverted": list(f.inverted)}) for f in forget]  # the caller's stay as they were
    # The process group (N processes) starts after the checks, and every way out closes it.
    procs, partial = distributed.current(device), None
    try:
        emit = (on_event or (lambda event: None)) if procs.is_main else (lambda event: None)
        partial = _prepare_out_dir(out_dir) if procs.is_main else None
        stages = Stages(emit)
        with stages("load"):
            loaded = loaded or models.load_shared(model, procs.device_name() or device)
        try:
            method_obj.check_model(loaded.model, config, len(forget))
        except NotApplicable as why:
            method, config, note = fallback(method, why, swap)
            notes.append(note)
            method_obj, config = _check_job(forget, method, retain, config, inv, sel)
        for note in notes:
            emit({"type": "note", "text": note})
        # Everyday questions, asked before and after: collateral damage shows without a keep set.
        everyday = general.held_out_questions(forget)
        selection, inputs = None, None
        # The original's answers to shipped questions, kept between runs (answer_cache.py).
        cache = AnswerCache.for_model(loaded.model, loaded.tokenizer) if procs.is_main else None
        # The original's answers, kept with a layer's inputs where the method changes nothing below it:
        # the probe after checks them from there up rather than decoding them again (drafts.py).
        frozen = method_obj.unchanged_below(loaded.model, config) if procs.is_main else 0
        record = Drafts(loaded.model, frozen) if frozen else None
        if procs.is_main:
            with stages("probe_before"):
                before = probe_sets(loaded.model, loaded.tokenizer, forget, retain, everyday, cache, before=True,
                                    retain_read=method_obj.uses_retain, record=record)
            if method_obj.needs_inverted:
                selection, more = invert_and_select(loaded, forget, inv, sel, config.seed, before["forget"],
                                                    stages, emit)
                notes += more
        with stages("train"):
            if procs.is_main:
                if config.anchors or config.neighbours or config.siblings:  # (tens of seconds before a first step)
                    emit({"type": "task", "text": "asking the original model the questions near these facts "
                                                  "(its answers must not change)"})
                inputs = training_inputs(loaded, forget, retain, config, before, cache)
                try:  # (a method that checks its anchors runs in one process: the others never get here)
                    method_obj.check_anchors(inputs[2])
                except NotApplicable as why:
                    method, config, note = fallback(method, why, swap)
                    notes.append(note)
                    emit({"type": "note", "text": note})
                    method_obj, config = _check_job(forget, method, retain, config, inv, sel)
                    inputs = training_inputs(loaded, forget, retain, config, before, cache)
            train_forget, train_retain, anchors = procs.broadcast(inputs)  # the others wait here for them
            trainer = Trainer(method_obj, loaded.model, loaded.tokenizer, config, train_forget, train_retain, emit,
                              should_stop, anchors, probe_facts=forget, processes=procs, defer_final_probe=True,
                              cache=cache)
            result = trainer.train()
        if not procs.is_main:  # no collective follows the training: the main one finishes alone
            return None
        with stages("probe_after"):
            # A run that stopped early probed its final model already (LoRA merging and the
            # dtype cast do not change greedy answers in fp32); otherwise the forget set is
            # probed now, as "before" was (in fp32: with --bf16 the loop's probes ran under bf16
            # autocast), in one pass with the others, and completes the loop's last probe.
            reuse = (result.last_probe and loaded.dtype == torch.float32 and not config.lora and not config.bf16
                     and loaded.device.type != "cuda")  # (on CUDA the loop runs under bf16 autocast)
            drafts = None
            if record and record.same_below(loaded.model, result.model):
                record.add_answers(loaded.model, loaded.tokenizer, [f.question for f in everyday],
                                   [r["answer"] for r in before["everyday"]["rows"]], cache)
                drafts = record if record.agrees(result.model) else None
            after = probe_sets(result.model, loaded.tokenizer, None if reuse else forget, retain, everyday,
                               drafts=drafts)
            if reuse:
                after["forget"] = result.last_probe
            elif result.probe_deferred:
                trainer.complete_probe(result, after["forget"])
        with stages("save"):
            save_checkpoint(result.model, loaded.tokenizer, partial / "model")
            if result.adapter:
                save_adapter(result.adapter, partial / "adapter")
        run = run_record(method, loaded, forget, retain, config, inv, sel, stages.rounded(), result, before, after,
                         notes)
        if procs.size > 1:
            run["processes"] = procs.size
        if cache:
            run["answer_cache"] = {"hits": cache.hits, "misses": cache.misses}
        if drafts:
            run["probe_after_drafts"] = {"layer": drafts.layer, "checked": drafts.checked, "settled": drafts.settled}
        write_run_files(partial, run, forget, selection, before, after)
        if out_dir.exists():
            out_dir.rmdir()  # checked empty above
        os.replace(partial, out_dir)
        emit({"type": "done", "run_dir": str(out_dir)})
        return run
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        procs.close()


def training_inputs(loaded, forget: list[Fact], retain: list[Fact] | None, config: TrainConfig,
                    before: dict, cache: AnswerCache | None = None) -> tuple[list[Fact], list[Fact] | None, list[Fact]]:
    """What the loop trains on: the forget facts (in the model's own words with own_answers),
    the retain facts, and the anchors (general prompts and neighbour questions)."""
    anchors = anchor_facts(loaded, forget, config.anchors, config.neighbours, config.siblings, config.seed, cache,
                           sibling_shots=config.sibling_shots, sibling_sentences=config.sibling_sentences)
    if config.own_answers:
        return own_answers(forget, before["forget"], split=True), own_answers(retain, before["retain"]), anchors
    return forget, retain, anchors
