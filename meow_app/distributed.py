"""Data-parallel unlearning: the shared training loop on N processes, each with a shard of
every batch, started by `accelerate launch --multi_gpu --num_processes N -m meow_app unlearn ...`
(or torchrun). One process (WORLD_SIZE unset) is the plain run, with nothing of this in the way.

How the N-process run equals the one-process run (same seed, same global batch):
- every process builds the same global batch (same data, same shuffling seed) and keeps
  rows rank, rank+N, ... (`Processes.batch`);
- each loss is normalised by the *whole* batch's answer tokens or rows, which the shard
  carries (losses.py reads batch["tokens"] / batch["rows"]), so each process's gradient is
  its share of the global gradient, and their sum (one all-reduce a step,
  `Processes.sum_gradients`) is the one-process gradient up to float rounding;
- every process then clips and steps identically, so the weights stay equal without
  being sent around.

Only the main process inverts, scores, probes, prints and writes RUN_DIR; it broadcasts
the training inputs and each early-stopping decision (pipeline.py, train.py). When any
process fails, the launcher ends the others; the main process says so in one line (a
mistake in the command is said once, by the main process) and leaves no RUN_DIR.

The wiring is Accelerate's (PartialState: process group, device per process, gloo on a
CPU, NCCL on GPUs); the collectives are accelerate.utils' reduce and broadcast.
"""

from __future__ import annotations

import datetime
import os
import signal
from dataclasses import dataclass

import torch

from .batches import IGNORE, Example, collate, to_device
from .errors import MeowError, NotApplicable, PeerFailed


@dataclass
class Processes:
    rank: int = 0
    size: int = 1
    device: torch.device | None = None   # this process's device (None: the caller picks)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_name(self) -> str | None:
        """This process's device as models.load takes it ('cpu', 'cuda:1'), None when unset."""
        if self.device is None:
            return None
        return "cpu" if self.device.type == "cpu" else str(self.device)

    def batch(self, examples: list[Example], pad_id: int, device, merge: bool = False) -> dict:
        """This process's shard of a global batch, carrying the whole batch's normalisers.
        A process left without rows (a batch smaller than N) computes on one row with zero
        weight: every process must take part in the step's all-reduce. `merge`: the shard's
        repeated rows computed once (batches.collate); the normalisers stay the whole batch's."""
        own = examples[self.rank::self.size]
        tokens = float(sum(label != IGNORE for ex in examples for label in ex.labels))
        rows = float(len(examples))
        if not own:
            own, tokens, rows = examples[:1], float("inf"), float("inf")
        batch = to_device(collate(own, pad_id, merge), device)
        batch["tokens"], batch["rows"] = tokens, rows
        return batch

    def sum_gradients(self, params, extra: list[float] | None = None) -> list[float]:
        """Sum the gradients of `params` (and the numbers in `extra`: the step's loss parts)
        over the processes, in place, in one all-reduce. Returns the summed `extra`."""
        extra = list(extra or [])
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device)
                 for p in params]
        flat = torch.cat(grads + [torch.tensor(extra, dtype=torch.float32, device=self.device or "cpu")])
        flat = self._collective(_reduce, flat)
        at = 0
        for p in params:
            n = p.numel()
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(flat[at:at + n].view_as(p))
            at += n
        return flat[at:].tolist()

    def broadcast(self, value):
        """The main process's `value`, on every process (any picklable object)."""
        if self.size == 1:
            return value
        return self._collective(_broadcast, value)

    def close(self) -> None:
        """Take this process's part of the process group down before the interpreter exits.
        Why: a gloo group left to the interpreter's shutdown can abort the process there
        ("terminate called without an active exception", SIGABRT) while its peers still run.
        Local to this process (no collective), so each one closes when it is done; the group is
        then gone for good (one run per launched process, as the CLI makes)."""
        if self.size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _collective(self, fn, value):
        try:
            return fn(value)
        except torch.OutOfMemoryError:  # this process's own failure, not a peer's
            raise
        except RuntimeError:  # gloo/NCCL: a peer closed the connection or timed out
            raise PeerFailed(PEER_FAILED) from None


def _reduce(tensor):
    from accelerate.utils import reduce

    return reduce(tensor, reduction="sum")


def _broadcast(value):
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


SINGLE = Processes()
PEER_FAILED = "another process of this run failed, so the run stopped and wrote nothing"


def check_method(method, size: int) -> None:
    """One-shot methods (second order, closed-form edit) and Sophia work on whole batches: one process only."""
    if size > 1 and (method.custom_loop or method.optimizer == "sophia"):
        reason = method.one_process or "its curvature is estimated from whole batches"
        raise NotApplicable(f"method '{method.name}' runs in one process ({reason}): start it without "
                        "`accelerate launch`, or with --num_processes 1")


def launched_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def current(device: str | None = None) -> Processes:
    """This process's place in the run: SINGLE without a launcher; else Accelerate's state
    (gloo on CPUs: `--device cpu` or no CUDA; one GPU per process otherwise)."""
    if launched_size() <= 1:
        return SINGLE
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    if device not in (None, "cpu", "cuda"):
        raise MeowError(f"--device {device}: a multi-process run uses 'cpu' or 'cuda' (one GPU per process)")
    # The others wait in a broadcast while the main process probes, inverts and scores:
    # minutes on a large model, longer than NCCL's 10-minute default.
    state = PartialState(cpu=cpu, timeout=datetime.timedelta(hours=2))
    # The launcher ends the others with SIGTERM when one fails: leave through the clean-up
    # (`finally` removes the partial run folder) instead of dying on the spot.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    return Processes(state.process_index, state.num_processes, state.device)


def launched_rank() -> int:
    """This process's rank under a launcher (0 without one)."""
    return int(os.environ.get("RANK", "0"))


def _stop_on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut the clean-up short
    raise PeerFailed(PEER_FAILED)
