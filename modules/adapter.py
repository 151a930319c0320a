"""A pretrained backbone trained through a PEFT adapter (or fully): the piece the causal-LM, vision-language and
LoRA encoder modules share by composition.

:class:`AdapterBackbone` builds the model (a tiny debug model's random base is saved once per run and
reused), keeps adapter-only checkpoints (the frozen base, 4-bit under QLoRA and up to 32B, is rebuilt from
``model.backbone`` on load) and exports one consolidated PEFT adapter with its preprocessing and the data's
prompt layout. A module holds one and calls it from its Lightning hooks.

The export helpers below serve every module: :func:`gathered_state` (a sharded model's full state on rank 0),
:func:`write_dir_atomically` (an export is swapped in whole) and :func:`standalone_copy` (a plain transformers
model, LoRA merged, for ``save_pretrained``).
"""

from __future__ import annotations

import json
import os
import shutil
from copy import deepcopy
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
    def export(self, module, path: Path, prompt: dict | None, transform=None) -> Path | None:
        """Save the PEFT adapter (adapter_config.json, adapter_model.safetensors), the preprocessing and the data's
        prompt layout (``prompt.json``), once, on rank 0. Called on every rank: a sharded (FSDP2) adapter is
        gathered into one first, a ZeRO-3 partitioned one through DeepSpeed. ``transform`` (state dict -> state
        dict, on rank 0) changes the tensors saved, e.g. folds a regression head's standardization into its output
        layer."""
        if self.lora is None:
            return None
        state = gathered_state(module, trainable_only=True)
        if not module.trainer.is_global_zero:
            return None
        model = module.model
        if transform is not None:
            state = transform(state if state is not None else model.state_dict())

        def fill(tmp: Path) -> None:
            model.save_pretrained(tmp, state_dict=state)
            self.preprocessing.save_pretrained(tmp)
            if prompt is not None:
                (tmp / "prompt.json").write_text(json.dumps(prompt, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
                if prompt.get("chat_template"):  # the recipe's template, so AutoTokenizer(adapter dir) carries it
                    (tmp / "chat_template.jinja").write_text(prompt["chat_template"], encoding="utf-8")

        return write_dir_atomically(path, fill)


def gathered_state(module, trainable_only: bool) -> dict | None:
    """The model's state dict for a save, on rank 0: gathered into full tensors when the model is sharded (FSDP2,
    or ZeRO-3: its trainable tensors only with ``trainable_only``), ``None`` when it is not (the model's own
    ``state_dict()`` then serves). A collective: every rank calls it; other ranks get ``None`` or nothing useful."""
    model, trainer = module.model, module.trainer
    state = module.full_state_dict()
    if getattr(trainer.strategy, "zero_stage_3", False):  # only DeepSpeedStrategy has the attribute
        # ZeRO-3 partitions every parameter: gather them for the save. Not yet run on a GPU; see the scale-out notes.
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad or not trainable_only]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if trainer.is_global_zero:
                if trainable_only:
                    state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
                else:
                    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state


def write_dir_atomically(path: Path, fill) -> Path:
    """Write a directory whole: ``fill(tmp)`` writes into ``<dir>.tmp``, which is synced, then swapped in. A kill
    mid-export leaves the previous export (or, between the two renames, ``<dir>.old``) loadable, never half of
    one."""
    tmp, old = path.with_name(f"{path.name}.tmp"), path.with_name(f"{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
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


def base_model(model):
    """The transformers model inside a PEFT wrapper (or ``model`` itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


def standalone_copy(model: torch.nn.Module, state: dict | None = None) -> torch.nn.Module:
    """A plain transformers model (a LoRA adapter merged into its base) holding ``model``'s weights, or ``state``
    (a full state dict of ``model``, gathered from shards), on the CPU in eval mode: what a deployable
    ``save_pretrained`` needs. Built beside the trained model, which stays as it is (a test may follow); the
    random initialisation of the copy, overwritten at once, leaves the run's random state alone."""
    from peft import PeftModel, get_peft_model

    peft = isinstance(model, PeftModel)
    base = base_model(model)
    # FSDP2 turns the root class into a subclass (FSDP<Name>); the copy is of the transformers class.
    cls = next(c for c in type(base).__mro__ if c.__module__.startswith("transformers."))
    state = model.state_dict() if state is None else state
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    with torch.random.fork_rng(devices=[]):
        copy = cls(deepcopy(base.config)).to(dtype)
        if peft:
            copy = get_peft_model(copy, deepcopy(model.peft_config[model.active_adapter]))
    copy.load_state_dict({k: v.detach().cpu() for k, v in state.items()}, strict=True)
    if peft:
        copy = copy.merge_and_unload()
    return copy.eval()
