"""``tuneloop merge``: fold a LoRA adapter into its base model's weights (``merge_and_unload``) and save a
plain transformers model (safetensors) with the tokenizer, ready for serving without PEFT."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from trainer.local_generation import copy_tokenizer, tokenizer_dir

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "fp32": "float32", "float32": "float32"}


class MergeError(ValueError):
    """The adapter cannot be merged as asked."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop merge",
        description="Merge a PEFT LoRA adapter into its base model and save the result as safetensors.",
        epilog="example:\n  tuneloop merge --base runs/intent/v1/base_model --adapter runs/intent/v1/adapter "
               "--out runs/intent/v1/merged --dtype bf16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", required=True, help="base model: local directory, hub id or package:<module>/<dir>")
    parser.add_argument("--adapter", required=True, help="adapter directory (adapter_config.json + weights)")
    parser.add_argument("--out", required=True, help="output directory for the merged model")
    parser.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES), help="dtype of the merged weights")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the base's repo")
    return parser


def _check_not_quantized(base: str) -> None:
    config = Path(base) / "config.json"
    if config.exists():
        quant = json.loads(config.read_text()).get("quantization_config")
        if quant and (quant.get("load_in_4bit") or quant.get("load_in_8bit") or quant.get("quant_method")):
            raise MergeError(
                f"{base} holds quantized weights ({quant.get('quant_method', 'bitsandbytes')}); merging into "
                "a 4-bit base would lose the adapter's precision. Merge into the original bf16/fp16 base "
                "weights instead (load the unquantized checkpoint, or dequantize it first), then quantize "
                "the merged model if you need to."
            )


def merge(base: str, adapter: str, out: str, dtype: str = "bf16", trust_remote_code: bool = False) -> Path:
    """Merge ``adapter`` into ``base`` and save to ``out``; returns ``out``."""
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from modules.backbone import resolve_path

    base = resolve_path(base)
    adapter_dir = Path(adapter)
    if not (adapter_dir / "adapter_config.json").exists():
        raise MergeError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    _check_not_quantized(base)
    peft_config = PeftConfig.from_pretrained(str(adapter_dir))
    auto = AutoModelForSequenceClassification if peft_config.task_type == "SEQ_CLS" else AutoModelForCausalLM
    model = auto.from_pretrained(base, dtype=getattr(torch, _DTYPES[dtype]), trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    # The adapter's own tokenizer when it carries one (trained with added tokens), else the base's.
    source = tokenizer_dir(base, str(adapter_dir))
    try:
        copy_tokenizer(source, out_dir, trust_remote_code)
    except (OSError, ValueError) as e:
        raise MergeError(f"merged weights saved to {out_dir}, but the tokenizer of {source} could not be "
                         f"loaded: {e}") from None
    for name in ("prompt.json", "chat_template.jinja"):  # the prompt layout travels with the merged weights
        if (adapter_dir / name).is_file():
            shutil.copyfile(adapter_dir / name, out_dir / name)
    return out_dir


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    start = time.time()
    try:
        out = merge(args.base, args.adapter, args.out, args.dtype, args.trust_remote_code)
    except MergeError as e:
        raise SystemExit(f"tuneloop merge: {e}") from None
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"merged {args.adapter} into {args.base} -> {out} ({size / 2**20:.1f} MiB safetensors, "
          f"{args.dtype}, {time.time() - start:.1f}s)")
