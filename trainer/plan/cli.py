"""``tuneloop plan -c RECIPE [-c OVERLAY ...] [--gpus N] [--nodes M] [--gpu-memory GiB] [--seq-len L] [--json]``."""

from __future__ import annotations

import argparse
import json

from trainer.plan.recipe import PlanError
from trainer.plan.render import render_text
from trainer.plan.report import plan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop plan",
        description="Count a recipe's parameters exactly on the meta device (no weights, no download), print PEFT's "
                    "trainable-parameter line, and estimate memory per GPU for every strategy preset (ddp, fsdp, "
                    "fsdp1, deepspeed_zero2, deepspeed_zero3, deepspeed_zero3_offload) with the recommended one "
                    "and the derived gradient accumulation.",
        epilog="examples:\n"
               "  tuneloop plan -c configs/sft/komt-llama2-13b-lora.yaml --gpus 8\n"
               "  tuneloop plan -c configs/sft/komt-llama2-13b-qlora.yaml --gpu-memory 24\n"
               "  tuneloop plan -c configs/intent/exaone-4.0-1.2b-lora.yaml -c configs/debug.yaml --json\n\n"
               "Estimates follow the assumptions in trainer/plan/memory.py (Korthikanti et al. 2022 "
               "activations, ZeRO byte counts, 1.5 GiB + 10% overhead).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", action="append", required=True, metavar="YAML",
                        help="recipe, then overlays (stacked left to right as in `tuneloop fit`)")
    parser.add_argument("--gpus", type=int, default=1, help="devices per node (default 1)")
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, metavar="GiB",
                        help="memory of one GPU in GiB (default 80)")
    parser.add_argument("--seq-len", type=int, default=None, metavar="L",
                        help="tokens per sample (default: data.cutoff_len or data.max_length of the recipe)")
    parser.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa",
                        help="sdpa (default; flash/memory-efficient kernels keep no s x s scores) or eager "
                             "(adds Korthikanti's 5·a·s²·b per layer)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    try:
        result = plan(args.config, gpus=args.gpus, nodes=args.nodes, gpu_memory=args.gpu_memory,
                      seq_len=args.seq_len, attention=args.attention)
    except PlanError as e:
        raise SystemExit(f"tuneloop plan: {e}") from None
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        render_text(result)
