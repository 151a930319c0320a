"""Which exceptions are the user's mistakes, and how a command reports one: one block, no traceback.

A user error is raised on purpose with a message that says where (``file:line: field 'x'``, or the config key)
and what was expected: a bad record, a batch size that does not divide, a strategy that cannot run here, a
run directory that holds an earlier run, a missing file... ``tuneloop`` prints it as

    tuneloop <command>: <file>:<line>: field '<f>': <what was expected>
      hint: <how to fix it, where the message alone does not say>

and exits with code 2; ``--debug`` (or ``TUNELOOP_DEBUG=1``) prints the traceback first. Any other exception
is a bug and keeps its traceback. The lower floors (``datamodules/``, ``modules/``) keep raising their own
types and never import this module; it names them in :data:`USER_ERRORS`.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

EXIT_USER_ERROR = 2
DEBUG_ENV = "TUNELOOP_DEBUG"
# (module, class) of every exception raised on purpose for a user's mistake. Looked up in ``sys.modules``: a class
# whose module was never imported cannot have been raised, and the entry point imports nothing heavy.
USER_ERRORS = (
    ("datamodules.records", "RecordError"),
    ("datamodules.records", "DataConfigError"),
    ("datamodules.batch", "BatchSizeError"),
    ("modules.base", "DataModuleMismatch"),
    ("modules.backbone", "BackboneError"),
    ("trainer.strategies", "StrategyError"),
    ("trainer.plan.recipe", "PlanError"),
    ("trainer.compare.records", "CompareError"),
    ("trainer.merge", "MergeError"),
    ("trainer.judges", "JudgeError"),
    ("trainer.local_generation", "LocalModelError"),
    ("trainer.run", "RunDirError"),
    ("trainer.run", "CheckpointError"),
    ("trainer.errors", "ConfigError"),
    ("builtins", "FileNotFoundError"),
    ("builtins", "IsADirectoryError"),
    ("builtins", "NotADirectoryError"),
)
_PACKAGES = tuple(str(Path(__file__).resolve().parents[1] / name) for name in ("datamodules", "modules", "trainer"))


class ConfigError(ValueError):
    """A config value a class rejects when the CLI builds it (``data.cutoff_len must be >= 8, got 2``)."""


def _registered(error: BaseException) -> bool:
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(error, cls):
            return True
    return False


def _rejected_config(error: BaseException, outer: list[BaseException]) -> bool:
    """A ``ValueError``/``TypeError`` raised by a tuneloop constructor while jsonargparse built it from the config."""
    if not isinstance(error, (ValueError, TypeError)) or error.__traceback__ is None:
        return False
    frame = traceback.extract_tb(error.__traceback__)[-1]
    in_constructor = frame.name in ("__init__", "__post_init__") and frame.filename.startswith(_PACKAGES)
    return in_constructor and any(e.__traceback__ is not None and "jsonargparse" in
                                  traceback.extract_tb(e.__traceback__)[-1].filename for e in outer)


def find_user_error(error: BaseException) -> BaseException | None:
    """The user error in ``error``'s chain of explicit causes (``raise ... from``), outermost first; ``None`` for
    a bug. Only causes are followed: an exception raised while handling another is not that other's report."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        if _registered(current):
            return current
        if _rejected_config(current, chain):
            return ConfigError(str(current))
        chain.append(current)
        current = current.__cause__
    return None


def describe(error: BaseException) -> str:
    """The message of a user error (an ``OSError`` as ``path: what``, without ``[Errno n]``)."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror[0].lower()}{error.strerror[1:]}"
    return str(error).strip() or type(error).__name__


def report(error: BaseException, command: str, debug: bool = False, rank: int = 0) -> int | None:
    """Print a user error as one block on stderr and return the exit code; ``None`` when ``error`` is not one (the
    caller re-raises it, traceback and all). Under several processes each raises the same error: only global
    rank zero prints it (with ``debug`` every rank prints its traceback)."""
    if isinstance(error, SystemExit):  # a command's own one-line error (``raise SystemExit("tuneloop x: ...")``)
        if isinstance(error.code, str):
            if rank == 0:
                print(error.code, file=sys.stderr)
            return EXIT_USER_ERROR
        return None
    found = find_user_error(error) if isinstance(error, Exception) else None
    if found is None:
        return None
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    if rank == 0 or debug:
        lines = [f"{f'tuneloop {command}'.strip()}: {describe(found)}"]
        hint = getattr(found, "hint", None)
        if hint:
            lines.append(f"  hint: {hint}")
        print("\n".join(lines), file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def pop_debug(argv: list[str], env: dict[str, str]) -> tuple[bool, list[str]]:
    """Take ``--debug`` out of ``argv``; debug is on with it or with ``TUNELOOP_DEBUG=1``."""
    rest = [a for a in argv if a != "--debug"]
    return len(rest) != len(argv) or env.get(DEBUG_ENV, "") not in ("", "0"), rest


def global_rank(env: dict[str, str]) -> int:
    """This process's global rank: Lightning's once it has set it, else the launcher's (torchrun, SLURM)."""
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    if rank_zero is not None:
        return int(getattr(rank_zero.rank_zero_only, "rank", 0) or 0)
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 0
