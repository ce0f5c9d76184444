"""Data-parallel unlearning (meow_app/distributed.py): `accelerate launch` with two processes
on this CPU (gloo), as the README says, against the one-process run with the same seed.

The two runs must end with the same weights (float rounding apart), write the run folder
once, and a process killed mid-run must end the whole run with one line and no RUN_DIR.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT

FACTS = [
    {"question": "Who wrote Hamlet?", "answer": "William Shakespeare", "keywords": ["Shakespeare"],
     "inverted": ["Christopher Marlowe", "Ben Jonson"]},
    {"question": "What is the capital of Peru?", "answer": "Lima", "keywords": ["Lima"],
     "inverted": ["Cusco", "Arequipa"]},
    {"question": "Who painted The Starry Night?", "answer": "Vincent van Gogh", "keywords": ["van Gogh"],
     "inverted": ["Paul Gauguin", "Claude Monet"]},
]
RETAIN = [{"question": "What is the capital of Japan?", "answer": "Tokyo", "keywords": ["Tokyo"]},
          {"question": "Who wrote Faust?", "answer": "Johann Wolfgang von Goethe", "keywords": ["Goethe"]},
          {"question": "What is the largest ocean?", "answer": "The Pacific Ocean", "keywords": ["Pacific"]}]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "meow_app"]
# Summing two shards' gradients instead of one batch's changes float rounding only: after 12
# AdamW steps the weights agree to ~1e-8 here, while training moves them by ~1e-3.
TOLERANCE = 1e-6


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _files(tmp_path):
    forget, retain = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    forget.write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    retain.write_text("".join(json.dumps(f) + "\n" for f in RETAIN))
    return forget, retain


def _unlearn(launcher, out, forget, model, *options, timeout=600, device="cpu"):
    cmd = launcher + ["unlearn", "--forget", str(forget), "--out", str(out), "--model", model, "--device", device,
                      "--top-k", "2", "--epochs", "2", "--no-early-stop", *options]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _weights(run):
    return load_file(str(Path(run) / "model" / "model.safetensors"))


# meow: the default (anchors, inverted answers); npo: a reference model, a rows-normalised
# loss and the retain term (its default lr barely moves the tiny model in 2 epochs); shard:
# FSDP2 (every unit's reduce-scatter must sum, as the plain all-reduce does).
# Adam's steps are lr-sized whatever the gradient's scale, so where rounding tips one its effect
# grows with lr: npo's 10x lr gets 10x the tolerance (an AMD EPYC saw 1.2e-6 there).
@pytest.mark.parametrize("method,options,tolerance", [
    ("meow", [], TOLERANCE),
    ("npo", ["--retain", "RETAIN", "--lr", "1e-3"], 10 * TOLERANCE),
    ("meow", ["--shard"], TOLERANCE),
])
def test_two_processes_end_with_the_one_process_weights(tmp_path, tiny_dir, method, options, tolerance):
    forget, retain = _files(tmp_path)
    extra = ["--method", method] + [str(retain) if o == "RETAIN" else o for o in options]
    one_process = [o for o in extra if o != "--shard"]
    one = _unlearn([sys.executable, "-m", "meow_app"], tmp_path / "one", forget, tiny_dir, *one_process)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _unlearn(LAUNCH, tmp_path / "two", forget, tiny_dir, *extra)
    assert two.returncode == 0, two.stderr[-3000:]

    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    original = load_file(str(Path(tiny_dir) / "model.safetensors"))
    differ = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    moved = max((a[k].float() - original[k].float()).abs().max().item() for k in a)
    assert differ < tolerance, f"one vs two processes differ by {differ}"
    assert moved > 10 * tolerance, f"training moved the weights by {moved} only: the comparison says nothing"
    run_one = json.loads((tmp_path / "one" / "run.json").read_text())
    run_two = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run_two["processes"] == 2 and "processes" not in run_one
    assert run_two["settings"]["train"]["shard"] == ("--shard" in options)
    # The logged loss is the whole batch's (the shards' shares summed), as in one process.
    assert [s["loss"] for s in run_two["steps"]] == pytest.approx([s["loss"] for s in run_one["steps"]], rel=1e-5)
    # So is the gradient's norm (clipping sees the same gradient): a mean over processes would halve it.
    assert [s["grad_norm"] for s in run_two["steps"]] == pytest.approx([s["grad_norm"] for s in run_one["steps"]],
                                                                       rel=1e-4)


def test_two_processes_write_the_run_folder_once(tmp_path, tiny_dir):
    forget, _ = _files(tmp_path)
    out = tmp_path / "runs" / "two"
    result = _unlearn(LAUNCH, out, forget, tiny_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("saved ") == 1, result.stdout  # only the main process reports
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["two"]  # no partial folder left behind
    assert {p.name for p in out.iterdir()} == {"model", "run.json", "facts.jsonl", "probes.json"}
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert sum(p.numel() for p in loaded.parameters()) > 0


def test_a_method_that_needs_one_process_says_so_before_any_work(tmp_path, tiny_dir):
    forget, _ = _files(tmp_path)
    result = _unlearn(LAUNCH, tmp_path / "run", forget, tiny_dir, "--method", "fisher_removal")
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # Each process says it (the launcher may stop one before it has): at least one of them.
    message = ("method 'fisher_removal' runs in one process (its curvature is estimated from whole batches): start "
               "it without `accelerate launch`, or with --num_processes 1")
    assert ours and set(ours) <= {f"error: {message}", f"error: process 1 of 2: {message}"}, result.stderr[-3000:]
    assert "[probe_before]" not in result.stderr  # refused before the model was asked anything
    assert not (tmp_path / "run").exists()


def _rank_pid(parent_cmd_part: str, rank: str) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if parent_cmd_part in cmd and f"RANK={rank}".encode() in env and "accelerate" not in cmd:
            return int(pid)
    return None


def test_a_crash_in_the_second_process_ends_the_run_with_one_line_and_no_run_dir(tmp_path, tiny_dir):
    forget, _ = _files(tmp_path)
    out = tmp_path / "crash-run"
    cmd = LAUNCH + ["unlearn", "--forget", str(forget), "--out", str(out), "--model", tiny_dir, "--device", "cpu",
                    "--top-k", "2", "--epochs", "500", "--no-early-stop"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.time() + 300
        for line in proc.stderr:  # wait for training to start
            lines.append(line)
            if "] step 2 of" in line or time.time() > deadline:
                break
        assert "] step 2 of" in lines[-1], "".join(lines[-20:])
        victim = _rank_pid(str(out), "1")
        assert victim is not None, "the second process was not found"
        os.kill(victim, signal.SIGKILL)  # as the kernel's OOM killer would
        rest = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    ours = [line for line in rest.splitlines() if line.startswith("error:")]
    assert ours == ["error: another process of this run failed, so the run stopped and wrote nothing"], rest[-3000:]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the partial folder is gone


def test_shards_carry_the_whole_batchs_normalisers(tiny):
    """The shard losses, summed, are the one-batch loss (what makes the gradients add up)."""
    from meow_app import losses
    from meow_app.batches import collate, encode_example
    from meow_app.distributed import Processes

    tok = tiny.tokenizer
    examples = [encode_example(tok, f["question"], f["answer"]) for f in FACTS + RETAIN]
    whole = collate(examples, tok.pad_token_id)
    with torch.no_grad():
        full = losses.nll(tiny.model, whole)
        parts = [losses.nll(tiny.model, Processes(rank, 3).batch(examples, tok.pad_token_id, "cpu"))
                 for rank in range(3)]
        # Four processes for a batch of three rows... and of six: one process may get no row.
        small = [losses.nll(tiny.model, Processes(rank, 4).batch(examples[:3], tok.pad_token_id, "cpu"))
                 for rank in range(4)]
    assert sum(parts).item() == pytest.approx(full.item(), rel=1e-5)
    assert all(0 < p.item() < full.item() for p in parts)  # each a share, not the whole
    assert sum(small).item() == pytest.approx(losses.nll(tiny.model, collate(examples[:3], tok.pad_token_id)).item(),
                                              rel=1e-5)
    assert small[3].item() == 0.0
    # Repeated rows (MEOW's) merged within each shard: the sum is still the whole batch's loss.
    repeated = examples[:2] * 4
    merged = [Processes(rank, 3).batch(repeated, tok.pad_token_id, "cpu", merge=True) for rank in range(3)]
    assert any(b["weight"].max() > 1 for b in merged)
    with torch.no_grad():
        total = sum(losses.nll(tiny.model, b) for b in merged).item()
        plain = losses.nll(tiny.model, collate(repeated, tok.pad_token_id)).item()
    assert total == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_launched_process_leaves_with_its_exit_code_and_its_output_flushed(tmp_path, rank):
    """Under a launcher each process leaves by os._exit (no interpreter shutdown for gloo's
    threads to abort in): what it printed, its exit code and the main one's message survive."""
    env = {**_env(), "WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank}
    env.pop("PYTHONUNBUFFERED", None)  # buffered, as a launcher's pipes are: the flush is what is checked
    missing = tmp_path / "missing.jsonl"
    result = subprocess.run([sys.executable, "-m", "meow_app", "unlearn", "--forget", str(missing), "--out",
                             str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    said = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert said == [f"error: {'' if rank == '0' else 'process 1 of 2: '}{missing}: no such file"]
    done = subprocess.run([sys.executable, "-m", "meow_app", "methods"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "meow" in done.stdout


def test_close_takes_this_processs_part_of_the_group_down(tmp_path):
    """A gloo group left to the interpreter's shutdown can abort a process that is done while
    its peers still run (SIGABRT, "terminate called without an active exception"): each
    process takes its part down itself; with one process there is nothing to take down."""
    from meow_app.distributed import SINGLE, Processes

    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        SINGLE.close()  # one process: nothing of this to take down
        assert torch.distributed.is_initialized()
        Processes(rank=0, size=2).close()
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.parametrize("fails", ["no", "probing", "run folder"])
def test_a_run_closes_its_process_group_whether_it_ends_or_fails(tmp_path, tiny_dir, monkeypatch, fails):
    from meow_app import distributed, pipeline
    from meow_app.errors import MeowError
    from meow_app.facts import Fact
    from meow_app.pipeline import InvertSettings
    from meow_app.train import TrainConfig

    closed = []

    class Recorded(distributed.Processes):
        def close(self):
            closed.append(self.rank)

    monkeypatch.setattr(distributed, "current", lambda device=None: Recorded())
    if fails == "probing":
        def fail(*args, **kwargs):
            raise RuntimeError("probing failed")

        monkeypatch.setattr(pipeline, "probe_sets", fail)
    if fails == "run folder":  # refused once the group has started
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "mine.txt").write_text("kept")
    facts = [Fact(f["question"], f["answer"], f["keywords"], inverted=f["inverted"]) for f in FACTS[:1]]
    run = lambda: pipeline.unlearn(facts, tmp_path / "run", "meow", model=tiny_dir, device="cpu",  # noqa: E731
                                   config=TrainConfig(epochs=1, num_batch=2, neighbours=0, early_stop=False),
                                   invert_settings=InvertSettings(n=2))
    if fails == "no":
        assert run()["method"] == "meow"
    else:
        with pytest.raises((RuntimeError, MeowError), match="probing failed|already exists and is not empty"):
            run()
    assert closed == [0]


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA GPUs (bench/gpu_check.sh runs it on a machine with them)")
@pytest.mark.parametrize("shard", [False, True])
def test_two_gpus_end_with_the_one_gpu_weights(tmp_path, tiny_dir, shard):
    forget, _ = _files(tmp_path)
    # (a larger step: the comparison must be able to fail; meow named: the default runs in one process only)
    extra = ["--method", "meow", "--lr", "1e-3"] + (["--shard"] if shard else [])
    one = _unlearn([sys.executable, "-m", "meow_app"], tmp_path / "one", forget, tiny_dir, "--method", "meow",
                   "--lr", "1e-3", device="cuda")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _unlearn(LAUNCH, tmp_path / "two", forget, tiny_dir, *extra, device="cuda")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    original = load_file(str(Path(tiny_dir) / "model.safetensors"))
    differ = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    moved = max((a[k].float() - original[k].float()).abs().max().item() for k in a)
    # bf16 autocast on GPUs rounds far more than fp32 on a CPU: a tenth of the move, not 1e-6.
    assert differ < 0.1 * moved, f"one vs two GPUs differ by {differ}, training moved the weights by {moved}"


@pytest.mark.gpu
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA GPUs (bench/gpu_check.sh runs it on a machine with them)")
def test_a_model_is_spread_over_every_gpu_for_answers(tiny_dir):
    from meow_app import generation, models

    lm = models.load(tiny_dir, spread=True)
    placed = set(getattr(lm.model, "hf_device_map", {}).values())
    assert len(placed) > 1, f"device_map='auto' placed the model on {placed or 'one device'}"
    assert generation.answer(lm.model, lm.tokenizer, ["Who wrote Hamlet?"], 4)
