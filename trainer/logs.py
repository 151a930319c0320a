"""tuneloop's console messages through :mod:`logging`: one handler for the ``trainer``, ``modules`` and
``datamodules`` loggers, on global rank zero only, with ``--quiet`` (warnings and errors only) and ``-v``
(debug) chosen on the command line.

Library code logs with ``logging.getLogger(__name__)`` and never configures handlers; the commands call
:func:`setup_logging`. Every DDP rank runs the same code, so the handler drops records of the other ranks.

Other libraries' chatter follows the same verbosity (:func:`quiet_libraries`, called once they are imported):
by default Lightning's info lines and tips, ``datasets``' and transformers' progress bars, transformers' load
reports, bitsandbytes' kernel notes, W&B's banner and a torch deprecation inside Lightning are silenced (what
matters of them tuneloop says in its own lines: the run directory, the model size, the W&B directory); ``-v``
brings every one of them back. Warnings and errors always show.
"""

from __future__ import annotations

import logging
import os
import sys

PACKAGES = ("trainer", "modules", "datamodules")
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


class RankZeroFilter(logging.Filter):
    """Passes records on global rank zero only (Lightning's ``rank_zero_only.rank``, set from the launcher's
    environment and by the strategy)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        return getattr(rank_zero_only, "rank", 0) == 0


class StdoutHandler(logging.StreamHandler):
    """Writes to the current ``sys.stdout`` (looked up at every record, so redirections and test capture see it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always reads sys.stdout
        pass


_handler: StdoutHandler | None = None
_verbosity = "normal"
#: A deprecation that torch raises inside Lightning's code: nothing a user can act on.
_LIBRARY_WARNINGS = [r"`isinstance\(treespec, LeafSpec\)` is deprecated"]
_set_env: dict[str, str] = {}  # the W&B settings this process set (and may take back)
#: Library notes about this machine that are expected on a CPU-only one: (logger, start of the message).
_MACHINE_NOTES = [("DeepSpeed", "Setting accelerator to CPU")]


class _DropNotes(logging.Filter):
    """Drops the :data:`_MACHINE_NOTES` of one library logger unless the verbosity is ``verbose``. A filter stays on
    the logger when the library configures it on import (its level does not)."""

    def __init__(self, starts: list[str]) -> None:
        super().__init__()
        self.starts = tuple(starts)

    def filter(self, record: logging.LogRecord) -> bool:
        return _verbosity == "verbose" or not str(record.msg).startswith(self.starts)


def setup_logging(verbosity: str = "normal") -> None:
    """Route tuneloop's loggers to stdout as ``tuneloop: message`` at the level of ``verbosity`` (quiet, normal,
    verbose). Idempotent: a second call only changes the level. Also the libraries that need no import for it:
    bitsandbytes' and DeepSpeed's notes, W&B's banner (:func:`quiet_libraries` does the others)."""
    global _handler, _verbosity
    level = LEVELS[verbosity]
    _verbosity = verbosity
    if _handler is None:
        for name in {n for n, _ in _MACHINE_NOTES}:
            logging.getLogger(name).addFilter(_DropNotes([m for n, m in _MACHINE_NOTES if n == name]))
        _handler = StdoutHandler()
        _handler.setFormatter(logging.Formatter("tuneloop: %(message)s"))
        _handler.addFilter(RankZeroFilter())
        for name in PACKAGES:
            logger = logging.getLogger(name)
            logger.addHandler(_handler)
            logger.propagate = False
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)
    # bitsandbytes keeps the level it finds (Lightning, datasets and transformers reset theirs on import:
    # quiet_libraries sets those).
    logging.getLogger("bitsandbytes").setLevel(logging.NOTSET if verbosity == "verbose" else logging.ERROR)
    _wandb_banner(verbosity == "verbose", os.environ)


def verbosity() -> str:
    """The verbosity the command chose (``quiet``, ``normal`` or ``verbose``)."""
    return _verbosity


def _wandb_banner(verbose: bool, env) -> None:
    """W&B reads ``WANDB_SILENT`` when a run starts: silent by default (tuneloop names the W&B directory itself),
    W&B's own lines with ``-v``. A value the user set is left alone."""
    if verbose:
        for key, value in list(_set_env.items()):
            if env.get(key) == value:
                del env[key]
            del _set_env[key]
    elif "WANDB_SILENT" not in env and "WANDB_QUIET" not in env:
        env["WANDB_SILENT"] = _set_env["WANDB_SILENT"] = "true"


def quiet_libraries() -> None:
    """Apply the verbosity to Lightning, ``datasets`` and transformers (imported here: call it where they are
    needed anyway) and to the torch deprecation inside Lightning. Normal and quiet: Lightning's info lines
    (seed, devices, tips, ``limit_*`` notes) and the libraries' progress bars and load reports are silenced;
    verbose: each library's own defaults."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    verbose = _verbosity == "verbose"
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        datasets.enable_progress_bars()
        datasets.logging.set_verbosity_warning()
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity_warning()
    else:
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    for message in _LIBRARY_WARNINGS if not verbose else ():
        warnings.filterwarnings("ignore", message=message)  # an identical filter is replaced, not repeated


def pop_verbosity(argv: list[str]) -> tuple[str, list[str]]:
    """Take ``--quiet`` / ``-v`` / ``--verbose`` out of ``argv`` (anywhere in it); the verbosity they choose."""
    quiet = "--quiet" in argv
    verbose = any(a in ("-v", "--verbose") for a in argv)
    if quiet and verbose:
        raise SystemExit("tuneloop: choose one of --quiet and -v/--verbose")
    rest = [a for a in argv if a not in ("--quiet", "-v", "--verbose")]
    return ("quiet" if quiet else "verbose" if verbose else "normal"), rest


def ensure_logging() -> None:
    """:func:`setup_logging` at the normal level unless a command has set it up already."""
    if _handler is None:
        setup_logging("normal")
