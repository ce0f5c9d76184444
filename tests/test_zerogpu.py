"""ZeroGPU without ZeroGPU: a fake `spaces` module records what each GPU function asks for.

On a ZeroGPU Space every `@spaces.GPU` function runs in a separate process that is cut off
after its duration (60 s unless told). The app sizes each call from the job
(meow_app/budget.py), keeps a whole unlearning run in one call, and refuses, in plain
words, a run that cannot fit before it starts.
"""

import importlib
import sys
import types

import pandas as pd
import pytest

from meow_app import budget, methods
from meow_app.train import TrainConfig

STUDIO = ["studio.session", "studio.compare_tab", "studio.invert_tab", "studio.memo_tab", "studio.unlearn_tab"]


@pytest.fixture
def zerogpu(monkeypatch, tiny_dir):
    """The studio modules imported with a fake `spaces`; the real ones restored afterwards."""
    asked = {}

    def GPU(duration=60):
        def decorate(f):
            asked[f.__name__] = duration

            def on_gpu(*args, **kwargs):
                asked.setdefault("calls", []).append((f.__name__, duration(*args, **kwargs)))
                return f(*args, **kwargs)
            on_gpu.__wrapped__ = f
            return on_gpu
        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=GPU))
    monkeypatch.setenv("MEOW_MODEL", tiny_dir)
    mods = {name: importlib.reload(importlib.import_module(name)) for name in STUDIO}
    yield asked, mods
    monkeypatch.delitem(sys.modules, "spaces")
    for name in STUDIO:
        importlib.reload(sys.modules[name])


def _session(mods, n_facts: int) -> dict:
    from meow_app.facts import Fact

    s = mods["studio.session"].new_session()
    s["facts"] = [Fact(f"What is the capital of country {i}?", f"City {i}") for i in range(n_facts)]
    return s


def _settings(**values) -> pd.DataFrame:
    return pd.DataFrame([[k, str(v)] for k, v in values.items()], columns=["setting", "value"])


def test_every_gpu_function_asks_for_a_duration_sized_from_its_job(zerogpu, monkeypatch):
    asked, mods = zerogpu
    assert mods["studio.session"].ZERO_GPU
    assert set(asked) == {"unlearn_on_gpu", "run_invert", "run_score", "send_chat", "run_probe"}
    assert all(callable(d) for d in asked.values())  # none left at the 60 s default
    few, many = _session(mods, 2), _session(mods, 200)
    # The tiny test model answers in no time: price it as a 7B model, where the job's size shows.
    with monkeypatch.context() as m:
        m.setattr(mods["studio.session"], "model_parameters", lambda s: 7_000_000_000)
        invert, score = asked["run_invert"], asked["run_score"]
        assert invert(few, "local", 4) < invert(many, "local", 4) <= budget.ZEROGPU_MAX_SECONDS
        assert invert(many, "local", 2) < invert(many, "local", 8)
        assert score(few, None) < score(many, None)
    unlearn = asked["unlearn_on_gpu"]
    short = unlearn(few, "meow", _settings(epochs=2), False)
    long = unlearn(few, "meow", _settings(epochs=20), False)
    assert budget.ZEROGPU_MIN_SECONDS <= short < long <= budget.ZEROGPU_MAX_SECONDS
    assert unlearn(few, "meow", _settings(epochs="many"), False) == budget.ZEROGPU_MIN_SECONDS  # refused at once


def test_a_run_too_long_for_the_space_is_refused_in_plain_words_before_it_starts(zerogpu, monkeypatch):
    asked, mods = zerogpu
    tab = mods["studio.unlearn_tab"]
    # The tiny test model is too small to exceed 5 minutes: price it as a 7B model.
    monkeypatch.setattr(tab, "model_parameters", lambda s: 7_000_000_000)
    s = _session(mods, 40)
    out = list(tab.run_unlearn(s, "meow", _settings(epochs=8), False, "local", 2, "", "", "", 1, "largest",
                               None, None))
    assert len(out) == 1
    message = out[0][1]
    assert "minutes of GPU time" in message and "at most 5 minutes" in message and "fewer facts" in message
    assert "calls" not in asked  # the GPU function was never entered
    assert s["runs"] == []


def test_a_run_that_fits_runs_whole_in_one_gpu_call(zerogpu):
    asked, mods = zerogpu
    tab = mods["studio.unlearn_tab"]
    s = _session(mods, 1)
    s["facts"][0].inverted = ["Somewhere"]
    table = _settings(epochs=1, num_batch=1, anchors=0, neighbours=0, early_stop="no")
    out = list(tab.run_unlearn(s, "meow", table, False, "local", 1, "", "", "", 1, "all", None, None))
    assert [name for name, _ in asked["calls"]] == ["unlearn_on_gpu"]  # one call for the whole run
    assert asked["calls"][0][1] >= budget.ZEROGPU_MIN_SECONDS
    assert "Done" in out[-1][1], out[-1][1]
    assert len(s["runs"]) == 1


def test_the_estimate_grows_with_facts_steps_and_model_size():
    config = TrainConfig()
    base = budget.unlearn_seconds(8, config, 135_000_000, "cuda")
    assert budget.unlearn_seconds(16, config, 135_000_000, "cuda") > base
    assert budget.unlearn_seconds(8, TrainConfig(epochs=12), 135_000_000, "cuda") > base
    assert budget.unlearn_seconds(8, config, 1_000_000_000, "cuda") > base
    assert budget.unlearn_seconds(8, config, 135_000_000, "cpu") > base
    assert budget.unlearn_seconds(40, config, 135_000_000, "cuda", n_inverted=8) > \
        budget.unlearn_seconds(40, config, 135_000_000, "cuda", n_inverted=2)  # more false answers to write
    assert budget.unlearn_seconds(8, TrainConfig(null_space=0.99), 1_000_000_000, "cuda") > \
        budget.unlearn_seconds(8, config, 1_000_000_000, "cuda")  # the projection's set-up
    edit = TrainConfig(**methods.REGISTRY["meow_edit"].defaults)  # its steps: the target vectors'
    assert budget.training_steps(8, edit, custom_loop=True, edit=True) == edit.epochs * edit.edit_steps
    # ... each a pass over one row per false answer: a step's cost per batch_size of them
    assert budget.training_steps(40, edit, custom_loop=True, edit=True) == 3 * edit.epochs * edit.edit_steps
    assert budget.unlearn_seconds(8, TrainConfig(**{**edit.to_dict(), "edit_steps": 40}), 135_000_000, "cuda",
                                  custom_loop=True, edit=True) > \
        budget.unlearn_seconds(8, edit, 135_000_000, "cuda", custom_loop=True, edit=True)
    # meow_patch: its own loop over the false answers, the truth rows and the sampled ones.
    patch = TrainConfig(**methods.REGISTRY["meow_patch"].defaults)
    rows = patch.num_batch + 2 + patch.patch_samples
    steps = budget.training_steps(40, patch, custom_loop=True, patch=True)
    assert steps == budget.epochs_run(40, patch, True) * -(-40 * rows // patch.batch_size)
    assert steps > budget.training_steps(8, patch, custom_loop=True, patch=True)
    assert budget.unlearn_seconds(40, patch, 135_000_000, "cuda", custom_loop=True, patch=True) > \
        budget.unlearn_seconds(8, patch, 135_000_000, "cuda", custom_loop=True, patch=True)
    resampled = TrainConfig(**{**patch.to_dict(), "patch_resample": 8})  # (its rows and its sampling pass count)
    assert budget.rows_per_fact(resampled, True) == rows + 8
    assert budget.unlearn_seconds(8, resampled, 135_000_000, "cuda", custom_loop=True, patch=True) > \
        budget.unlearn_seconds(8, patch, 135_000_000, "cuda", custom_loop=True, patch=True)
    assert budget.unlearn_seconds(8, TrainConfig(null_space=0.99, lora=True), 135_000_000, "cuda") == \
        budget.unlearn_seconds(8, TrainConfig(lora=True), 135_000_000, "cuda")  # (no projection with LoRA)
    # The embedded model's default run of 8 facts fits a ZeroGPU call; a 7B run of 200 facts does not.
    assert budget.too_long(base) is None
    assert budget.too_long(budget.unlearn_seconds(200, config, 7_000_000_000, "cuda"))
    # On this project's 2-core CPU the default run takes ~300 s (docs/benchmarks.md item 1): the
    # estimate, an upper bound, is of that order.
    cpu = budget.unlearn_seconds(8, config, 135_000_000, "cpu")
    assert 150 < cpu < 1500
