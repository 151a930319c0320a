"""Padding with and without length-grouped batching, on a recipe's training data.

    python scripts/bench_padding.py -c configs/sft/komt-llama2-13b-lora.yaml -c configs/debug.yaml

Tokenizes the recipe's training split exactly as training does (same DataModule, cutoff and tokenizer) and
prints the share of pad tokens over one epoch for random micro batches and for length-grouped ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", required=True, help="recipe and overlays, as for fit")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to average over (each reshuffles)")
    args = parser.parse_args(argv)

    import numpy as np

    from datamodules.instruction import LengthGroupedSampler, padding_fraction
    from trainer.cli import TuneloopCLI

    cli = TuneloopCLI(args=[a for c in args.config for a in ("-c", c)] + ["--trainer.logger=false"], run=False)
    dm, module = cli.datamodule, cli.model
    dm.tokenizer = module.tokenizer
    dm.setup("fit")
    lengths = dm.splits["train"]["length"]
    micro = dm.batch.micro_batch_size
    plain, grouped = [], []
    for epoch in range(args.epochs):
        rng = np.random.default_rng(dm.seed + epoch)
        plain.append(padding_fraction(lengths, micro, rng.permutation(len(lengths)).tolist()))
        sampler = LengthGroupedSampler(lengths, dm.batch.global_batch_size, micro, seed=dm.seed)
        sampler.set_epoch(epoch)
        grouped.append(padding_fraction(lengths, micro, list(sampler)))
    result = {"records": len(lengths), "micro_batch_size": micro, "mean_length": float(np.mean(lengths)),
              "padding_random": float(np.mean(plain)), "padding_grouped": float(np.mean(grouped))}
    print(f"{result['records']} records, micro batch {micro}, mean length {result['mean_length']:.1f} tokens")
    print(f"padding fraction per epoch: random batches {result['padding_random']:.3f}, "
          f"length-grouped {result['padding_grouped']:.3f}")
    return result


if __name__ == "__main__":
    main()
