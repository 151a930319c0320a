"""Distributed faults: when one rank dies, raises or freezes, every rank ends in bounded time and the output names
the rank that failed.

What happens without this: a rank killed mid-step makes its peers fail after a few seconds with hundreds of lines
of gloo/NCCL errors that never say which rank died; a frozen rank (SIGSTOP, a hung driver) holds the others in
a collective for the process group's timeout, 30 minutes by default. The pieces:

* **Collective timeout** (``trainer.strategies.collective_timeout``): every preset's process group gets it
  (``TUNELOOP_COLLECTIVE_TIMEOUT`` seconds, default 1800; the first rendezvous of the processes waits at least
  10 minutes). A collective waiting longer on a silent peer raises:
  gloo ends its pending send/recv at the deadline; NCCL's watchdog aborts the communicator and, by default
  (``TORCH_NCCL_ASYNC_ERROR_HANDLING=3``), the process. A dead peer is noticed sooner: its sockets close.
* **Heartbeat** (:class:`Heartbeat`): each rank records its host and pid, then a timestamp every
  ``timeout / 20`` seconds (1-15 s), in the process group's store (the TCPStore rank 0 hosts for rendezvous).
* **Failure report** (:func:`report_failure`, from the strategies' ``on_exception``): the failing rank writes its
  error into the store and prints one line, ``tuneloop: rank 0 failed at global step 12: DistBackendError: ...;
  rank 1 stopped answering (process stopped, pid 4711 on node-a, last heartbeat 21 s ago)``: a peer that
  recorded an error is named with it, one whose heartbeat went stale (or whose process on this host is gone or
  stopped) as having stopped answering. The line is appended to the exception's message too, so it is also the
  last line of the traceback.
* **Launcher**: Lightning's in-process launcher (rank 0 starts the other local ranks) already kills everything a
  few seconds after a child exits with an error; :class:`ChildWatch` prints which rank it was first. When rank 0
  fails it ends its children (at once when they are stopped, otherwise after a short grace), and a rank whose
  launcher (rank 0, its parent) is stopped ends it: a frozen process never ends by itself. Under torchrun or
  SLURM the launcher does this: torchrun's agent stops the remaining workers when one fails; ``srun
  --kill-on-bad-exit=1`` ends a SLURM step when one task fails (``scripts/slurm/train.sbatch`` sets it).
  A child that exits with tuneloop's user-error code (2: a mistake in the data or config, which rank 0 reports in
  one line) is not named again, nor one that rank 0 ends after such a mistake of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from trainer.errors import EXIT_USER_ERROR

KEY = "tuneloop/fault"  # store keys: <KEY>/proc/<rank>, <KEY>/beat/<rank>, <KEY>/failed/<rank>


def process_state(pid: int) -> str | None:
    """``gone``, ``exited`` (a zombie), ``stopped`` (SIGSTOP) or ``None`` (running, or not knowable) for a
    process on this host (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
    except (OSError, IndexError):
        return None
    return {"T": "stopped", "Z": "exited", "X": "exited"}.get(state)


def _is_communication_error(error: BaseException) -> bool:
    import torch.distributed as dist

    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(s in text for s in ("gloo", "nccl", "connection", "timed out"))


class Heartbeat:
    """One rank's liveness record in the process group's store, written by a daemon thread (see the module
    docstring), and what the other ranks' records say when this rank fails."""

    def __init__(self, store, rank: int, world_size: int, interval: float) -> None:
        self.store, self.rank, self.world_size, self.interval = store, rank, world_size, interval
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.peers: dict[int, tuple[str, int]] = {}  # rank -> (host, pid), read once every rank has written it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneloop-heartbeat", daemon=True)

    @classmethod
    def start(cls, rank: int, world_size: int, timeout: timedelta) -> Heartbeat | None:
        """Start beating in the default process group's store; ``None`` when there is none."""
        from torch.distributed import distributed_c10d

        try:
            store = distributed_c10d._get_default_store()
        except (RuntimeError, ValueError):
            return None
        interval = min(max(timeout.total_seconds() / 20, 1.0), 15.0)
        beat = cls(store, rank, world_size, interval)
        store.set(f"{KEY}/proc/{rank}", f"{beat.host} {beat.pid}")
        beat._beat()
        beat._thread.start()
        return beat

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        self.store.set(f"{KEY}/beat/{self.rank}", repr(time.time()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
                if len(self.peers) < self.world_size:
                    self._read_peers()
            except Exception:  # noqa: BLE001 - the store is gone (rank 0 ended): nothing left to report to
                return

    def _read_peers(self) -> None:
        for rank in range(self.world_size):
            key = f"{KEY}/proc/{rank}"
            if rank not in self.peers and self.store.check([key]):
                host, pid = self.store.get(key).decode().rsplit(" ", 1)
                self.peers[rank] = (host, int(pid))

    def mark_failed(self, message: str) -> None:
        """Record this rank's error for the others (best effort, a few seconds at most)."""
        _bounded(lambda: self.store.set(f"{KEY}/failed/{self.rank}", message), STORE_WAIT)

    def diagnose(self, wait: bool) -> list[str]:
        """One phrase per other rank that recorded an error or stopped answering. With ``wait``, a rank that
        died a moment ago (its heartbeat not yet stale) is waited for, up to three heartbeat intervals. Every
        store access is bounded: a frozen store host (rank 0) never blocks the report."""
        deadline = time.monotonic() + (3 * self.interval if wait else 0)
        while True:
            found, error = _bounded(self._read, STORE_WAIT)
            if error is not None:
                return self._store_lost(error)
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(min(self.interval / 2, 1.0))

    def _read(self) -> list[str]:
        self._read_peers()
        found = []
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            if self.store.check([f"{KEY}/failed/{rank}"]):
                found.append(f"rank {rank} failed: {self.store.get(f'{KEY}/failed/{rank}').decode()}")
                continue
            beat = self.store.get(f"{KEY}/beat/{rank}") if self.store.check([f"{KEY}/beat/{rank}"]) else None
            age = time.time() - float(beat) if beat is not None else None
            state = self._local_state(rank)
            if state is not None or (age is not None and age > 3 * self.interval):
                found.append(f"rank {rank} stopped answering ({self._describe(rank, state, age)})")
        return found

    def _store_lost(self, error: BaseException) -> list[str]:
        state = self._local_state(0)
        phrase = f"rank 0 stopped answering ({self._describe(0, state, None)}; the store it hosts does not respond)"
        if self.rank != 0 and state == "stopped" and self.peers.get(0, (None, None))[1] == os.getppid():
            # Our launcher (Lightning starts the local ranks from rank 0) is frozen: it would never end by itself.
            os.kill(os.getppid(), signal.SIGKILL)
            phrase += "; it launched this process and was ended (SIGKILL)"
        return [phrase] if self.rank != 0 else [f"the process group's store does not respond: {error}"]

    def _local_state(self, rank: int) -> str | None:
        host, pid = self.peers.get(rank, (None, None))
        return process_state(pid) if host == self.host and pid is not None else None

    def _describe(self, rank: int, state: str | None, age: float | None) -> str:
        host, pid = self.peers.get(rank, ("an unknown host", "unknown"))
        parts = [f"process {state}"] if state else []
        parts.append(f"pid {pid} on {host}")
        if age is not None:
            parts.append(f"last heartbeat {age:.0f} s ago")
        return ", ".join(parts)


STORE_WAIT = 3.0  # seconds a failing rank waits for one store access


def _bounded(fn, seconds: float):
    """``(fn(), None)``, or ``(None, error)`` when it raises or has not returned within ``seconds`` (a store
    client blocks without end on a host that is stopped; the daemon thread is then left behind)."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except Exception as error:  # noqa: BLE001 - reported by the caller
            out["error"] = error

    thread = threading.Thread(target=target, name="tuneloop-store-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return None, TimeoutError(f"no answer within {seconds:.0f} s")
    return out.get("value"), out.get("error")


class ChildWatch(threading.Thread):
    """In the process that launched the other local ranks: print which rank exited with an error, once, as soon
    as it happens (Lightning's own observer then ends the job). Exit code 2 is no fault: every rank meets the same
    user error, and ``tuneloop`` prints it once."""

    def __init__(self, procs: list[subprocess.Popen], first_rank: int) -> None:
        super().__init__(name="tuneloop-child-watch", daemon=True)
        self.procs, self.first_rank = procs, first_rank
        self.quiet = False  # set when this process ends its children after a user error: their end is no news

    def run(self) -> None:
        reported: set[int] = set()
        while len(reported) < len(self.procs):
            time.sleep(0.5)
            for i, proc in enumerate(self.procs):
                code = proc.poll()
                if code is None or i in reported:
                    continue
                reported.add(i)
                if code not in (0, EXIT_USER_ERROR) and not self.quiet:
                    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                    print(f"tuneloop: rank {self.first_rank + i} (pid {proc.pid}) {how}", file=sys.stderr, flush=True)


class WatchedLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher of the local ranks, plus :class:`ChildWatch`."""

    _watch: ChildWatch | None = None

    def _call_children_scripts(self) -> None:
        super()._call_children_scripts()
        self._watch = ChildWatch(self.procs, self.cluster_environment.node_rank() * self.num_processes + 1)
        self._watch.start()

    def end_children(self, grace: float, quiet: bool = False) -> None:
        """End the ranks this process launched: stopped ones at once, the others when they have not exited
        within ``grace`` seconds. ``quiet``: after a user error (every rank meets it, rank 0 has reported it), end
        them without a word."""
        if quiet and self._watch is not None:
            self._watch.quiet = True
        deadline = time.monotonic() + grace
        first = self.cluster_environment.node_rank() * self.num_processes + 1
        for i, proc in enumerate(self.procs):
            while proc.poll() is None:
                stopped = process_state(proc.pid) == "stopped"
                if stopped or time.monotonic() >= deadline:
                    why = "it is stopped" if stopped else f"it did not exit within {grace:.0f} s"
                    if not quiet:
                        print(f"tuneloop: ending rank {first + i} (pid {proc.pid}): {why}", file=sys.stderr,
                              flush=True)
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(0.2)


def report_failure(strategy, exception: BaseException) -> None:
    """The strategies' ``on_exception``: record and print this rank's failure with what is known of the others,
    then (in the launcher) end the local ranks it started. A deliberate stop (``SystemExit``: e.g. the non-finite
    guard, raised by every rank together), a user error (printed once by ``tuneloop``) or Ctrl+C is not a fault;
    only the children are ended (without a word: they would stop at the same error)."""
    from trainer.errors import find_user_error

    beat: Heartbeat | None = getattr(strategy, "_heartbeat", None)
    fault = isinstance(exception, Exception) and find_user_error(exception) is None
    if fault:
        trainer = strategy.lightning_module.trainer if strategy.lightning_module is not None else None
        step = trainer.global_step if trainer is not None else "?"
        text = str(exception).strip().splitlines()
        error = f"{type(exception).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
        if beat is not None:
            beat.mark_failed(f"{error} (global step {step})")
        others = beat.diagnose(wait=_is_communication_error(exception)) if beat is not None else []
        line = f"tuneloop: rank {strategy.global_rank} failed at global step {step}: {error}"
        if others:
            line += "; " + "; ".join(others)
            if len(exception.args) == 1 and isinstance(exception.args[0], str):
                exception.args = (f"{exception.args[0]}\n{line}",)
        print(line, file=sys.stderr, flush=True)
    launcher = strategy.launcher
    if isinstance(launcher, WatchedLauncher) and launcher.procs and not isinstance(exception, KeyboardInterrupt):
        launcher.end_children(grace=5.0, quiet=not fault)
