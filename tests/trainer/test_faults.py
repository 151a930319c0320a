"""Distributed faults on two real CPU processes (gloo): a rank that is killed or frozen mid-training ends the job
within the collective timeout, non-zero, and the output names the rank.

The fit is the tiny debug encoder under ``--trainer.strategy=ddp`` (Lightning's launcher: rank 0 is the process
started here, rank 1 its child). The fault comes at the first progress line (10 optimizer steps in).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

from trainer.faults import Heartbeat, process_state
from trainer.strategies import StrategyError, collective_timeout, with_fault_handling

FAULT = [pytest.mark.faults, pytest.mark.distributed]  # the tests that start real processes

TIMEOUT = 15  # TUNELOOP_COLLECTIVE_TIMEOUT, seconds
SLACK = 15  # reporting, ending the other rank, interpreter exit (seconds, on a busy 2-core machine)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def run_with_fault(tmp_path, sig: signal.Signals, target: str):
    env = {**os.environ, "WANDB_MODE": "offline", "TUNELOOP_COLLECTIVE_TIMEOUT": str(TIMEOUT), "PYTHONUNBUFFERED": "1"}
    env.pop("TUNELOOP_RUN_VERSION", None)
    cmd = [sys.executable, "-m", "trainer", "fit", "-c", "configs/encoder/waam-anomaly.yaml", "-c", "configs/debug.yaml",
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", f"--run.root={tmp_path}",
           "--trainer.logger=false", "--trainer.max_epochs=3", "--trainer.limit_train_batches=50",
           "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0", "--run.test_after_fit=false",
           "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=true"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "epoch 1/" in line and " step " in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pids = [proc.pid]
    try:
        deadline = time.monotonic() + 300
        while not started.wait(0.5) and proc.poll() is None and time.monotonic() < deadline:
            pass
        assert started.is_set(), f"training never started (exit {proc.poll()}):\n" + "".join(lines[-60:])
        pids += children(proc.pid)
        assert len(pids) == 2, pids
        victim = pids[1] if target == "child" else pids[0]
        os.kill(victim, sig)
        hit = time.monotonic()
        proc.wait(timeout=TIMEOUT + SLACK + 60)  # a hang fails here (and the finally ends it)
        ended = time.monotonic() - hit
        reader.join(10)  # rank 1 shares the pipe: EOF once it is gone too
        deadline = time.monotonic() + SLACK
        while any(alive(p) for p in pids[1:]) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = [p for p in pids[1:] if alive(p)]
        return proc.returncode, ended, "".join(lines), survivors
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


@FAULT[0]
@FAULT[1]
def test_killed_rank_ends_the_job_fast_and_is_named(tmp_path):
    code, ended, out, survivors = run_with_fault(tmp_path, signal.SIGKILL, "child")
    assert code != 0 and not survivors
    assert ended < TIMEOUT, f"{ended:.1f} s"  # a dead peer closes its sockets: no need to wait for the timeout
    assert "rank 1 stopped answering (process" in out or "rank 1 (pid" in out, out[-3000:]
    print(f"killed rank: job ended {ended:.1f} s after SIGKILL")


@FAULT[0]
@FAULT[1]
def test_stopped_rank_ends_the_job_within_the_timeout(tmp_path):
    code, ended, out, survivors = run_with_fault(tmp_path, signal.SIGSTOP, "child")
    assert code != 0 and not survivors  # the frozen rank is ended too, not left behind
    assert ended < TIMEOUT + SLACK, f"{ended:.1f} s"
    assert "rank 1 stopped answering (process stopped" in out and "ending rank 1" in out, out[-3000:]
    print(f"stopped rank 1: job ended {ended:.1f} s after SIGSTOP")


@FAULT[0]
@FAULT[1]
def test_stopped_launcher_rank_is_ended_by_the_other(tmp_path):
    # Rank 0 started rank 1: frozen, it would never end by itself; rank 1 times out and ends it.
    code, ended, out, survivors = run_with_fault(tmp_path, signal.SIGSTOP, "parent")
    assert code == -signal.SIGKILL and not survivors
    assert ended < TIMEOUT + SLACK, f"{ended:.1f} s"
    assert "rank 0 stopped answering (process stopped" in out and "was ended (SIGKILL)" in out, out[-3000:]
    print(f"stopped rank 0: job ended {ended:.1f} s after SIGSTOP")


# ----------------------------------------------------------------------------------- pieces, without processes
def test_collective_timeout_comes_from_the_environment():
    from datetime import timedelta

    assert collective_timeout({}) == timedelta(minutes=30)
    assert collective_timeout({"TUNELOOP_COLLECTIVE_TIMEOUT": "20"}) == timedelta(seconds=20)
    for bad in ("0", "-5", "soon"):
        with pytest.raises(StrategyError, match="TUNELOOP_COLLECTIVE_TIMEOUT"):
            collective_timeout({"TUNELOOP_COLLECTIVE_TIMEOUT": bad})
    t = timedelta(seconds=20)
    assert with_fault_handling("ddp", t) == {"class_path": "trainer.strategies.TuneloopDDPStrategy",
                                             "init_args": {"timeout": t}}
    fsdp = with_fault_handling({"class_path": "trainer.strategies.FSDP2Strategy",
                                "init_args": {"process_group_backend": "gloo"}}, t)
    assert fsdp["init_args"] == {"process_group_backend": "gloo", "timeout": t}


class FakeStore:
    """The store calls the heartbeat makes; ``frozen`` blocks every call, as a TCPStore on a stopped host does."""

    def __init__(self, frozen=False):
        self.data, self.frozen = {}, frozen

    def _wait(self):
        while self.frozen:
            time.sleep(0.1)

    def set(self, key, value):
        self._wait()
        self.data[key] = value.encode() if isinstance(value, str) else value

    def get(self, key):
        self._wait()
        return self.data[key]

    def check(self, keys):
        self._wait()
        return all(k in self.data for k in keys)


def test_heartbeat_names_failed_stale_and_unreachable_ranks():
    store = FakeStore()
    me = Heartbeat(store, rank=0, world_size=4, interval=1.0)
    now = time.time()
    store.set("tuneloop/fault/proc/1", "far-away-host 11")
    store.set("tuneloop/fault/beat/1", repr(now - 10))  # stale
    store.set("tuneloop/fault/proc/2", "far-away-host 12")
    store.set("tuneloop/fault/beat/2", repr(now))  # alive
    store.set("tuneloop/fault/failed/3", "ValueError: boom (global step 7)")
    assert me.diagnose(wait=False) == [
        "rank 1 stopped answering (pid 11 on far-away-host, last heartbeat 10 s ago)",
        "rank 3 failed: ValueError: boom (global step 7)"]

    # A local process that is gone is named at once, without waiting for its heartbeat to go stale.
    gone = subprocess.Popen(["true"])
    gone.wait()
    local = FakeStore()
    local.set("tuneloop/fault/proc/1", f"{me.host} {gone.pid}")
    local.set("tuneloop/fault/beat/1", repr(time.time()))
    assert process_state(gone.pid) == "gone" and process_state(os.getpid()) is None
    (phrase,) = Heartbeat(local, rank=0, world_size=2, interval=1.0).diagnose(wait=False)
    assert phrase.startswith(f"rank 1 stopped answering (process gone, pid {gone.pid} on {me.host}")

    # A store host that does not answer: the report comes within the bound, naming rank 0.
    other = Heartbeat(FakeStore(frozen=True), rank=1, world_size=2, interval=1.0)
    start = time.monotonic()
    assert other.diagnose(wait=True)[0].startswith("rank 0 stopped answering (")
    assert time.monotonic() - start < 5


def test_child_watch_names_faults_but_not_user_errors(capsys):
    """A child that exits with 2 met a user error, which rank 0 prints once; killed or crashed children are named."""
    from trainer.faults import ChildWatch

    class Exited:
        def __init__(self, pid, code):
            self.pid, self.code = pid, code

        def poll(self):
            return self.code

    ChildWatch([Exited(11, 2), Exited(12, 1), Exited(13, -signal.SIGKILL), Exited(14, 0)], first_rank=1).run()
    assert capsys.readouterr().err.splitlines() == ["tuneloop: rank 2 (pid 12) exited with code 1",
                                                    "tuneloop: rank 3 (pid 13) was killed by SIGKILL"]


def test_children_ended_after_a_user_error_are_ended_quietly(capsys):
    """Rank 0 met a user error (reported once by tuneloop) and ends the ranks it launched: no line about them; after
    a fault it names each one it ends."""
    from types import SimpleNamespace

    from trainer.faults import ChildWatch, WatchedLauncher

    for quiet in (True, False):
        child = subprocess.Popen(["sleep", "30"])
        launcher = WatchedLauncher.__new__(WatchedLauncher)  # the parts end_children uses
        launcher.procs, launcher.num_processes = [child], 2
        launcher.cluster_environment = SimpleNamespace(node_rank=lambda: 0)
        launcher._watch = ChildWatch([child], first_rank=1)
        launcher.end_children(grace=0.2, quiet=quiet)
        assert child.poll() == -signal.SIGKILL and launcher._watch.quiet is quiet
        launcher._watch.run()  # what the watch thread would print about the child now
        expected = [] if quiet else [f"tuneloop: ending rank 1 (pid {child.pid}): it did not exit within 0 s",
                                     f"tuneloop: rank 1 (pid {child.pid}) was killed by SIGKILL"]
        assert capsys.readouterr().err.splitlines() == expected


def test_slurm_script_ends_the_step_when_a_task_fails_and_resumes_when_requeued(tmp_path):
    """``scripts/slurm/train.sbatch`` with ``srun`` replaced by one that prints its arguments."""
    (tmp_path / "srun").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    (tmp_path / "srun").chmod(0o755)
    slurm = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "77",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "8"}

    def sbatch(**env):
        env = {k: v for k, v in {**os.environ, **slurm, **env}.items() if v is not None}
        return subprocess.run(["bash", str(ROOT / "scripts/slurm/train.sbatch"), "-c", "recipe.yaml"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=30)

    first = sbatch()
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["--kill-on-bad-exit=1", ".venv/bin/python", "-m", "trainer", "fit",
                                         "--run.version=slurm-77", "-c", "recipe.yaml", "--trainer.num_nodes=2",
                                         "--trainer.devices=8"]
    requeued = sbatch(SLURM_RESTART_COUNT="1")
    assert requeued.stdout.splitlines()[-3:] == ["--trainer.devices=8", "--ckpt_path", "last"]
    unset = sbatch(SLURM_NTASKS_PER_NODE=None)
    assert unset.returncode != 0 and "set --ntasks-per-node (one task per GPU)" in unset.stderr
