"""A pretrained backbone trained through a PEFT adapter (or fully): the piece the causal-LM and vision-language
modules share by composition.

:class:`AdapterBackbone` builds the model (a tiny debug model's random base is saved once per run and
reused), keeps adapter-only checkpoints (the frozen base, 4-bit under QLoRA and up to 32B, is rebuilt from
``model.backbone`` on load) and exports one consolidated PEFT adapter with its preprocessing and the data's
prompt layout. A module holds one and calls it from its Lightning hooks.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from modules.backbone import BackboneSpec, LoraSpec, QuantSpec, build_model


class AdapterBackbone:
    """Model construction, adapter checkpoints and adapter export for one module.

    Args:
        spec: The pretrained model (or the tiny debug model) to build.
        lora: The adapter; ``None`` = full fine-tuning (checkpoints then keep every tensor, nothing is exported).
        quant: 4-bit settings of the frozen base, or ``None``.
        preprocessing: What turns inputs into model inputs (a tokenizer or a processor): saved beside the
            adapter and beside a tiny model's random base with ``save_pretrained``.
    """

    def __init__(self, spec: BackboneSpec, lora: LoraSpec | None, quant: QuantSpec | None, preprocessing) -> None:
        if quant is not None and lora is None:
            raise ValueError("model.quant (4-bit base) needs model.lora: a quantized base is trained through "
                             "adapters (QLoRA)")
        self.spec, self.lora, self.quant, self.preprocessing = spec, lora, quant, preprocessing

    # ----- building -------------------------------------------------------------------------------------------
    def tiny_base_dir(self, module) -> Path | None:
        """Where a tiny model's random base lives: ``<run dir>/base_model`` of the run whose checkpoint is being
        restored (``module.checkpoint_run_dir``), else of this run; ``None`` without a Trainer or for a real
        backbone."""
        if not self.spec.tiny or module._trainer is None:
            return None
        if module.checkpoint_run_dir is not None:
            saved = Path(module.checkpoint_run_dir) / "base_model"
            if (saved / "config.json").exists():
                return saved
        return Path(module.trainer.default_root_dir) / "base_model"

    def build(self, module, auto_class, tokenizer, quant: QuantSpec | None = None, **config_overrides) -> torch.nn.Module:
        """The backbone's model (``modules.backbone.build_model``). A tiny model's random base is written once, by
        rank 0, to ``<run dir>/base_model`` with its preprocessing (adapters name it as their base); the other
        ranks wait for it and load it from there, and a restored checkpoint loads the base of its own run, so a
        changed seed cannot change the model."""
        tiny_dir = self.tiny_base_dir(module)
        fresh = tiny_dir is not None and not (tiny_dir / "config.json").exists()
        trainer = module._trainer
        if tiny_dir is not None and not trainer.is_global_zero:
            trainer.strategy.barrier("tiny-base")  # rank 0 writes the random base first
        device = trainer.strategy.root_device if (trainer is not None and quant is not None) else None
        model = build_model(auto_class, self.spec, tokenizer, quant=quant, device=device, tiny_dir=tiny_dir,
                            **config_overrides)
        if tiny_dir is not None and trainer.is_global_zero:
            if fresh:
                self.preprocessing.save_pretrained(tiny_dir)
            trainer.strategy.barrier("tiny-base")
        return model

    # ----- checkpoints ----------------------------------------------------------------------------------------
    @staticmethod
    def _trainable_keys(model: torch.nn.Module) -> set[str]:
        return {f"model.{n}" for n, p in model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, model: torch.nn.Module, checkpoint: dict) -> None:
        """A LoRA run changes only the adapter: its checkpoint keeps the trainable tensors (small, resumable)."""
        if self.lora is not None:
            keep = self._trainable_keys(model)
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                        if k in keep or not k.startswith("model.")}
            checkpoint["tuneloop"] = {"adapter_only": True}

    def on_load_checkpoint(self, model: torch.nn.Module, checkpoint: dict) -> None:
        """Check that an adapter-only checkpoint holds every trainable tensor of ``model``. Sharded strategies
        load the weights themselves and hand over the checkpoint without them."""
        if checkpoint.get("tuneloop", {}).get("adapter_only") and "state_dict" in checkpoint:
            missing = self._trainable_keys(model) - set(checkpoint["state_dict"])
            if missing:
                raise ValueError(f"checkpoint lacks {len(missing)} adapter tensors of this model (e.g. "
                                 f"{sorted(missing)[0]}); was it trained with a different model.lora?")

    # ----- export ---------------------------------------------------------------------------------------------
    def export(self, module, path: Path, prompt: dict | None) -> Path | None:
        """Save the PEFT adapter (adapter_config.json, adapter_model.safetensors), the preprocessing and the data's
        prompt layout (``prompt.json``), once, on rank 0. Called on every rank: a sharded (FSDP2) adapter is
        gathered into one first, a ZeRO-3 partitioned one through DeepSpeed."""
        if self.lora is None:
            return None
        model, trainer = module.model, module.trainer
        state = module.full_state_dict()
        if getattr(trainer.strategy, "zero_stage_3", False):  # only DeepSpeedStrategy has the attribute
            # ZeRO-3 partitions every parameter: gather the trainable (adapter) ones for the save.
            # Not yet run on a GPU; see the scale-out notes.
            import deepspeed

            trainable = [p for p in model.parameters() if p.requires_grad]
            with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
                if trainer.is_global_zero:
                    state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
        if not trainer.is_global_zero:
            return None
        # Written whole into <dir>.tmp, then swapped in: a kill mid-export leaves the previous export (or, between
        # the two renames, <dir>.old) loadable, never half an adapter.
        tmp, old = path.with_name(f"{path.name}.tmp"), path.with_name(f"{path.name}.old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, state_dict=state)
        self.preprocessing.save_pretrained(tmp)
        if prompt is not None:
            (tmp / "prompt.json").write_text(json.dumps(prompt, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as f:
                    os.fsync(f.fileno())
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return path
