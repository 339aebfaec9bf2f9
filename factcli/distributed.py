"""Data-parallel analysis on torch.distributed: every sum is additive over samples, so each
process sums a disjoint contiguous share of them, the float64 totals are all-reduced, and rank 0
finishes exactly as one process over all samples would.

A launch is torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the
environment) or `launch` (`fact analyze --nproc N`), which starts N local workers the same way.
Failure is agreed on collectively: a rank that fails records its message in the launch's store
and joins one all-reduce of failure flags; the others see the flag between batches, stop, and
join it too, so every rank ends (exit 2) and rank 0 prints the one line. No rank is left waiting
in a collective that a failed rank will never enter.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .engine.analysis import Plan
from .engine.sums import Sums
from .errors import FactError

# How long a rank waits for the others: to join the launch, and in one collective (the slowest
# rank finishing its share). Generous, since shares are equal and the wait is their difference.
TIMEOUT = timedelta(minutes=30)
GRACE = 90  # seconds the other workers of --nproc get to follow a worker that failed
_FAILED, _MESSAGE, _EXITED = "failed", "message", "exited"  # keys in the launch's store


@dataclass(frozen=True)
class Rank:
    """This process's place in a launch."""

    rank: int
    world_size: int
    local_rank: int


def environment() -> Rank | None:
    """The place torchrun (or `launch`) gave this process; None when it runs alone."""
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return None
    try:
        place = Rank(*(int(os.environ[key]) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")))
    except (KeyError, ValueError):
        raise FactError("WORLD_SIZE is set but RANK or LOCAL_RANK is missing or not an integer; "
                        "start several processes with torchrun or fact analyze --nproc") from None
    if not 0 <= place.rank < place.world_size or place.local_rank < 0:
        raise FactError(f"rank {place.rank} does not fit a world of {place.world_size} processes")
    return place


def share(n: int, index: int, count: int) -> slice:
    """Share `index` of `count` of range(n): contiguous, disjoint, covering, sizes within one of
    each other. No padding and no repeated samples, whatever n is (a share may be empty)."""
    return slice(n * index // count, n * (index + 1) // count)


def rank_device(device: str | None, place: Rank) -> str | None:
    """Each rank of a CUDA launch takes the GPU of its local rank unless one is named."""
    cuda = (device in (None, "auto") and torch.cuda.is_available()) or device == "cuda"
    return f"cuda:{place.local_rank}" if cuda else device


class _Aborted(Exception):
    """Another rank failed: stop this rank's pass and join the agreement."""


class Group:
    """The process group of a launch plus its store, where a failed rank leaves its message."""

    def __init__(self, place: Rank, device: torch.device):
        self.place = place
        store, _, _ = next(dist.rendezvous("env://", place.rank, place.world_size,
                                           timeout=TIMEOUT))
        self.flags = dist.PrefixStore("factcli/", store)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                store=dist.PrefixStore("group/", store), rank=place.rank,
                                world_size=place.world_size, timeout=TIMEOUT)
        self.device = device if device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        dist.destroy_process_group()

    def fail(self, message: str) -> None:
        """Record this rank's failure; the first rank to fail keeps its message."""
        if self.flags.add(_FAILED, 1) == 1:
            self.flags.set(_MESSAGE, f"rank {self.place.rank} of {self.place.world_size}: "
                                     f"{message}")

    def watch(self, progress: Callable[[int, int], None] | None) -> Callable[[int, int], None]:
        """A progress callback (called after each batch) that stops when another rank failed."""
        def check(done: int, total: int) -> None:
            if self.flags.check([_FAILED]):
                raise _Aborted
            if progress:
                progress(done, total)
        return check

    def agree(self, failed: bool) -> None:
        """Every rank says whether it failed; if any did, every rank raises the first message."""
        flag = torch.tensor([float(failed)], dtype=torch.float64, device=self.device)
        dist.all_reduce(flag)
        if flag.item() > 0:
            if self.place.rank == 0:  # after the message is printed: the others may go
                atexit.register(self.flags.set, _EXITED, "1")
            else:  # torchrun stops every rank at the first exit: let rank 0 print first
                with contextlib.suppress(RuntimeError):
                    self.flags.wait([_EXITED], timedelta(seconds=60))
            raise FactError(self.flags.get(_MESSAGE).decode())

    def all_reduce(self, sums: Sums) -> None:
        """Add every rank's sums into this rank's: the float64 totals in place, and the counts
        of uses a rank saw in its first batch (what `Sums.merge` keeps, the largest)."""
        for total in sums.tensors():
            dist.all_reduce(total)
        seen = [None] * self.place.world_size
        dist.all_gather_object(seen, (sums.uses, sums.flipped, sums.unseen, sums.batches))
        sums.batches = 0
        for uses, flipped, unseen, batches in seen:
            sums.uses |= uses  # Counter union: the larger count
            sums.flipped |= flipped
            for name, what in unseen.items():
                sums.unseen.setdefault(name, what)
            sums.batches += batches


def reduced_sums(prepare: Callable[[str | None], Plan], device: str | None,
                 shard: tuple[int, int] = (0, 1),
                 progress: Callable[[int, int], None] | None = None,
                 first: Callable[[], None] | None = None) -> tuple[Plan, Sums] | None:
    """The plan and raw sums of shard `shard` = (I, N) of the samples, over every rank.

    `prepare(device)` builds the plan. Alone, this process sums the whole shard. In a launch,
    each rank sums its own share of the shard, the sums are all-reduced, and rank 0 gets
    (plan, sums) while every other rank gets None. `first` runs on rank 0 before the pass (a
    check that the output can be written), so that its failure too ends every rank.
    """
    place = environment()
    if place is None:
        if first:
            first()
        plan = prepare(device)
        return plan, plan.accumulate(share(len(plan.x), *shard), progress)
    from .engine.device import resolve_device

    mine = rank_device(device, place)
    try:
        group = Group(place, resolve_device(mine))
    except RuntimeError as error:  # the store or the backend (gloo, nccl) could not be reached
        raise FactError(f"rank {place.rank} could not join the launch: "
                        f"{str(error).strip().splitlines()[0]}") from None
    try:
        failed = False
        try:
            if first and place.rank == 0:
                first()
            plan = prepare(mine)
            plan.info["world_size"] = place.world_size
            outer = share(len(plan.x), *shard)
            inner = share(outer.stop - outer.start, place.rank, place.world_size)
            sums = plan.accumulate(slice(outer.start + inner.start, outer.start + inner.stop),
                                   group.watch(progress if place.rank == 0 else None))
        except _Aborted:
            failed = True
        except Exception as error:  # any failure must reach the agreement, or the others hang
            failed = True
            group.fail(_one_line(error))
        try:
            group.agree(failed)
            group.all_reduce(sums)
        except RuntimeError as error:  # a rank hung past TIMEOUT or its connection broke
            raise FactError(f"rank {place.rank} of {place.world_size} lost the other ranks: "
                            f"{str(error).strip().splitlines()[0]}") from None
        return (plan, sums) if place.rank == 0 else None
    finally:
        group.close()


def _one_line(error: Exception) -> str:
    """A FactError's message; anything else as its type and the first line of its message."""
    text = str(error).strip()
    if isinstance(error, FactError) or not text:
        return text or type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0]}"


def launch(nproc: int, command: list[str]) -> int:
    """Run `command` (e.g. python -m factcli analyze …) as `nproc` local workers of one launch,
    as torchrun --nproc-per-node would; returns the exit status (the workers print the rest).

    The launcher hosts the store the workers meet at (127.0.0.1, a port the system picks), so no
    port is guessed. A worker that dies without reaching the agreement (killed, out of memory)
    cannot leave the others waiting: they are stopped and the death is reported in one line.
    """
    store = dist.TCPStore("127.0.0.1", 0, nproc, is_master=True, timeout=TIMEOUT,
                          wait_for_workers=False)
    threads = max(1, (os.cpu_count() or 1) // nproc)
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
            "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
            "TORCHELASTIC_USE_AGENT_STORE": "True",  # connect to this store, as under torchrun
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    workers = [subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                env={**base, "RANK": str(r), "LOCAL_RANK": str(r)})
               for r in range(nproc)]
    failed_at = None
    try:
        while True:
            codes = [worker.poll() for worker in workers]
            dead = [(r, code) for r, code in enumerate(codes) if code not in (None, 0, 2)]
            if dead:
                rank, code = dead[0]
                how = f"signal {-code}" if code < 0 else f"exit status {code}"
                raise FactError(f"worker {rank} of {nproc} ended with {how}; the others were "
                                "stopped")
            if None not in codes:
                return 2 if 2 in codes else 0
            if 2 in codes:  # the others follow within seconds unless they never joined
                failed_at = failed_at or time.monotonic()
                if time.monotonic() - failed_at > GRACE:
                    raise FactError(f"worker {codes.index(2)} of {nproc} failed and workers "
                                    f"{', '.join(str(r) for r, c in enumerate(codes) if c is None)}"
                                    f" did not stop within {GRACE} s; they were stopped")
            time.sleep(0.05)
    finally:
        _stop(workers)


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
