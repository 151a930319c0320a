"""Padding with and without length-grouped batching and packing, on a recipe's training data; optionally the
time of a training micro batch padded and packed.

    python scripts/bench_padding.py -c configs/sft/komt-llama2-13b-lora.yaml -c configs/debug.yaml
    python scripts/bench_padding.py -c configs/intent/exaone-4.0-1.2b-lora.yaml -c configs/debug.yaml --time 8 \
        --threads 1 --model.init_args.backbone.tiny_size.hidden_size=256

Tokenizes the recipe's training split exactly as training does (same DataModule, cutoff and tokenizer) and
prints the share of pad tokens over one epoch (what ``train/padding_fraction`` logs) for random micro batches,
length-grouped ones, and packed ones (``data.packing``: one row per micro batch, or first-fit-decreasing rows of
``--row-tokens``, default ``data.packing_row_tokens`` or else ``data.cutoff_len``). ``--time N`` builds the
recipe's model and times forward + backward of N micro batches of the epoch's order, padded and packed; further
``--key=value`` arguments override the recipe as on the ``tuneloop`` command line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def packed_padding(lengths: list[int], micro_batch_size: int, order: list[int], row_tokens: int | None) -> float:
    """Share of pad tokens when the micro batches of ``order`` are packed (``datamodules.collate.pack_rows``)."""
    from datamodules.collate import pack_rows

    pad = total = 0
    for i in range(0, len(order), micro_batch_size):
        batch = [lengths[j] for j in order[i:i + micro_batch_size]]
        rows = pack_rows(batch, row_tokens)
        width = max(sum(batch[j] for j in row) for row in rows)
        total += width * len(rows)
        pad += width * len(rows) - sum(batch)
    return pad / total if total else float("nan")


def time_micro_batches(module, dataset, micro: int, order: list[int], collators: dict, n: int,
                       rounds: int = 5) -> dict:
    """Seconds per micro batch (forward + backward of the summed token NLL, as training computes it:
    ``response_nll``) for each collator, on the same ``n`` micro batches of ``order``: the best of ``rounds``
    passes, the collators taking turns (so that a busy machine slows them alike), after one untimed warm-up batch
    each."""
    n = min(n, len(order) // micro)
    batches = [[dataset[j] for j in order[i:i + micro]] for i in range(0, micro * n, micro)]
    collated = {name: [collate(b) for b in batches] for name, collate in collators.items()}

    def step(batch) -> None:
        module.zero_grad(set_to_none=True)
        nll, _ = module.response_nll(batch)
        nll.backward()

    best = {name: float("inf") for name in collated}
    for name, cb in collated.items():
        step(cb[0])  # warm-up
    for _ in range(rounds):
        for name, cb in collated.items():
            start = time.perf_counter()
            for batch in cb:
                step(batch)
            best[name] = min(best[name], (time.perf_counter() - start) / len(cb))
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", required=True, help="recipe and overlays, as for fit")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to average over (each reshuffles)")
    parser.add_argument("--row-tokens", type=int, default=None,
                        help="packed row budget (default: data.packing_row_tokens, else data.cutoff_len)")
    parser.add_argument("--time", type=int, default=0, metavar="N",
                        help="also time N training micro batches padded and packed (builds the recipe's model)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for --time (default: torch's)")
    args, overrides = parser.parse_known_args(argv)

    import numpy as np

    from datamodules.instruction import CausalCollator, LengthGroupedSampler, padding_fraction
    from trainer.cli import TuneloopCLI

    cli = TuneloopCLI(args=[a for c in args.config for a in ("-c", c)] + overrides + ["--trainer.logger=false"],
                      run=False)
    dm, module = cli.datamodule, cli.model
    dm.tokenizer = module.tokenizer
    dm.setup("fit")
    lengths = dm.splits["train"]["length"]
    micro = dm.batch.micro_batch_size
    row_tokens = args.row_tokens or dm.packing_row_tokens or dm.cutoff_len
    plain, grouped, packed_rows = [], [], []
    for epoch in range(args.epochs):
        rng = np.random.default_rng(dm.seed + epoch)
        order = rng.permutation(len(lengths)).tolist()
        plain.append(padding_fraction(lengths, micro, order))
        packed_rows.append(packed_padding(lengths, micro, order, row_tokens))
        sampler = LengthGroupedSampler(lengths, dm.batch.global_batch_size, micro, seed=dm.seed)
        sampler.set_epoch(epoch)
        grouped.append(padding_fraction(lengths, micro, list(sampler)))
    result = {"records": len(lengths), "micro_batch_size": micro, "mean_length": float(np.mean(lengths)),
              "padding_random": float(np.mean(plain)), "padding_grouped": float(np.mean(grouped)),
              "padding_packed_one_row": 0.0, "row_tokens": row_tokens,
              "padding_packed_rows": float(np.mean(packed_rows))}
    print(f"{result['records']} records, micro batch {micro}, mean length {result['mean_length']:.1f} tokens")
    print(f"padding fraction per epoch: random batches {result['padding_random']:.3f}, "
          f"length-grouped {result['padding_grouped']:.3f}, packed into one row 0.000, "
          f"packed into rows of <= {row_tokens} tokens {result['padding_packed_rows']:.3f}")
    if args.time:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        module.configure_model()
        module.train()
        order = np.random.default_rng(dm.seed).permutation(len(lengths)).tolist()
        pad = module.tokenizer.pad_token_id
        collators = {"padded": CausalCollator(pad), "packed_one_row": CausalCollator(pad, True),
                     f"packed_rows_{row_tokens}": CausalCollator(pad, True, row_tokens)}
        seconds = time_micro_batches(module, dm.splits["train"], micro, order, collators, args.time)
        result["seconds_per_micro_batch"] = seconds
        print(f"forward + backward per micro batch ({args.time} batches, {torch.get_num_threads()} threads): "
              + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in seconds.items()))
    return result


if __name__ == "__main__":
    main()
