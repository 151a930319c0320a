"""``python -m trainer.compare ...``, the same as ``tuneloop compare ...``."""

import sys

from trainer.compare.cli import main

main(sys.argv[1:])
