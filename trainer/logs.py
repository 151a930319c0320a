"""tuneloop's console messages through :mod:`logging`: one handler for the ``trainer``, ``modules`` and
``datamodules`` loggers, on global rank zero only, with ``--quiet`` (warnings and errors only) and ``-v``
(debug) chosen on the command line.

Library code logs with ``logging.getLogger(__name__)`` and never configures handlers; the commands call
:func:`setup_logging`. Every DDP rank runs the same code, so the handler drops records of the other ranks.
"""

from __future__ import annotations

import logging
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


def setup_logging(verbosity: str = "normal") -> None:
    """Route tuneloop's loggers to stdout as ``tuneloop: message`` at the level of ``verbosity`` (quiet, normal,
    verbose). Idempotent: a second call only changes the level. ``quiet`` also quiets Lightning's info lines."""
    global _handler
    level = LEVELS[verbosity]
    if _handler is None:
        _handler = StdoutHandler()
        _handler.setFormatter(logging.Formatter("tuneloop: %(message)s"))
        _handler.addFilter(RankZeroFilter())
        for name in PACKAGES:
            logger = logging.getLogger(name)
            logger.addHandler(_handler)
            logger.propagate = False
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)
    if verbosity == "quiet":
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


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
