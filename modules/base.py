"""The one thin base every task module shares: optimizer wiring and the LR schedule."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import ClassVar

import lightning.pytorch as pl
import torch

from modules.optim import SchedulerSpec, param_groups

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """AdamW with the settings most fine-tuning recipes start from."""
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01)


class TuneloopModule(pl.LightningModule):
    """Base of the task modules: ``self.model`` is built in ``configure_model``; the optimizer is injected.

    Subclasses set ``self.model`` (an ``nn.Module``) and implement the steps. The schedule's length is
    ``trainer.estimated_stepping_batches``: dataset size / global batch x epochs (or ``max_steps``).
    """

    def __init__(self, optimizer: OptimizerCallable = default_optimizer, scheduler: SchedulerSpec | None = None):
        super().__init__()
        self.optimizer_fn = optimizer
        self.scheduler_spec = scheduler or SchedulerSpec()
        self.model: torch.nn.Module | None = None
        # The run directory of the checkpoint this process restores (``--ckpt_path runs/e/v/checkpoints/x``),
        # set by the CLI: a debug run's random base is loaded from there, not drawn anew.
        self.checkpoint_run_dir = None
        self._eval_outputs: list = []  # this process's test-step outputs, for predictions.jsonl and plots

    # ----- how ``tuneloop plan`` builds this module's model (meta device, no weights, no Trainer) -----------
    #: PEFT task type of the module's adapters; ``SEQ_CLS`` models carry a classification head of
    #: ``num_labels`` outputs (the planner builds them with ``AutoModelForSequenceClassification``).
    peft_task_type: ClassVar[str] = "CAUSAL_LM"

    @classmethod
    def planned_quant(cls, quant):
        """The 4-bit settings this module applies for the recipe's ``quant`` (e.g. modules kept unquantized)."""
        return quant

    @classmethod
    def planned_lora(cls, model: torch.nn.Module, lora, init_args: dict):
        """The LoRA settings this module applies to ``model`` for the recipe's ``lora`` and ``init_args``."""
        return lora

    def on_test_epoch_start(self) -> None:
        self._eval_outputs = []

    def pop_eval_outputs(self) -> list:
        """Test-step outputs of this process (for predictions.jsonl and plots), emptied on read."""
        outputs, self._eval_outputs = self._eval_outputs, []
        return outputs

    def plain_hyperparameters(self) -> None:
        """Store spec dataclasses in ``self.hparams`` as dicts: checkpoints stay loadable with
        ``torch.load(weights_only=True)`` (which refuses custom classes)."""
        for key, value in list(self.hparams.items()):
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                self.hparams[key] = dataclasses.asdict(value)

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2 (the ``fsdp`` preset): ``fully_shard`` every transformer block, then the root, over the
        data-parallel mesh. Blocks are the classes the model itself declares unsplittable
        (``_no_split_modules``). No-op under other strategies."""
        mesh = self.device_mesh
        if mesh is None:
            return model
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
        blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
        if not blocks:
            raise TypeError(f"{type(model).__name__} declares no transformer blocks (_no_split_modules) to shard")
        precision = str(self.trainer.precision)
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if precision.startswith("bf16") and self.device.type == "cuda" else MixedPrecisionPolicy())
        dp_mesh = mesh["data_parallel"]
        for block in blocks:
            fully_shard(block, mesh=dp_mesh, mp_policy=policy)
        fully_shard(model, mesh=dp_mesh, mp_policy=policy)
        return model

    def full_state_dict(self) -> dict | None:
        """The model's full state dict on rank 0 when it is sharded (a collective: every rank calls it);
        ``None`` when it is not sharded (callers then use the module's own state)."""
        if self.device_mesh is None:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def configure_optimizers(self):
        if self.model is None:
            raise RuntimeError("configure_model() must build self.model before optimizers are configured")
        optimizer = self.optimizer_fn(param_groups(self.model))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_spec.build(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.log("train/lr", optimizer.param_groups[0]["lr"])


class AdapterModule(TuneloopModule):
    """Base of the modules whose backbone can be trained through a PEFT adapter (causal LM, vision-language).

    Subclasses set ``self.lora`` (a ``LoraSpec`` or ``None``) and ``self.tokenizer``. With an adapter:
    checkpoints keep the trainable tensors only, and ``export_adapter`` writes one consolidated PEFT adapter
    (gathered first when FSDP2 or ZeRO-3 shards it).
    """

    lora = None
    restored_from: dict | None = None  # global_step and epoch of the last checkpoint loaded into the module

    def _trainable_keys(self) -> set[str]:
        return {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A LoRA run changes only the adapter: its checkpoint keeps the trainable tensors, and the frozen
        # base (4-bit under QLoRA, up to 32B) is rebuilt from model.backbone on load. Small and resumable.
        if self.lora is not None:
            keep = self._trainable_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                        if k in keep or not k.startswith("model.")}
            checkpoint["tuneloop"] = {"adapter_only": True}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Which training state these weights are (the adapter export records it).
        self.restored_from = {"global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch")}
        # Sharded strategies load the weights themselves and hand over the checkpoint without them.
        if checkpoint.get("tuneloop", {}).get("adapter_only") and "state_dict" in checkpoint:
            missing = self._trainable_keys() - set(checkpoint["state_dict"])
            if missing:
                raise ValueError(f"checkpoint lacks {len(missing)} adapter tensors of this model (e.g. "
                                 f"{sorted(missing)[0]}); was it trained with a different model.lora?")

    def tiny_base_dir(self):
        """Where a tiny model's random base lives: ``<run dir>/base_model`` of the run whose checkpoint is being
        restored (``checkpoint_run_dir``), else of this run; ``None`` without a Trainer or for a real backbone."""
        from pathlib import Path

        if not self.backbone.tiny or self._trainer is None:
            return None
        if self.checkpoint_run_dir is not None:
            saved = Path(self.checkpoint_run_dir) / "base_model"
            if (saved / "config.json").exists():
                return saved
        return Path(self.trainer.default_root_dir) / "base_model"

    def build_backbone(self, auto_class, quant=None, **config_overrides) -> torch.nn.Module:
        """``self.backbone``'s model (``modules.backbone.build_model``). A tiny model's random base is written
        once, by rank 0, to ``<run dir>/base_model`` with its preprocessing (adapters name it as their base);
        the other ranks wait for it and load it from there, and a restored checkpoint loads the base of its
        own run, so a changed seed cannot change the model."""
        from modules.backbone import build_model

        tiny_dir = self.tiny_base_dir()
        fresh = tiny_dir is not None and not (tiny_dir / "config.json").exists()
        if tiny_dir is not None and not self.trainer.is_global_zero:
            self.trainer.strategy.barrier("tiny-base")  # rank 0 writes the random base first
        device = self.trainer.strategy.root_device if (self._trainer is not None and quant is not None) else None
        model = build_model(auto_class, self.backbone, self.tokenizer, quant=quant, device=device,
                            tiny_dir=tiny_dir, **config_overrides)
        if tiny_dir is not None and self.trainer.is_global_zero:
            if fresh:
                self.save_preprocessing(tiny_dir)
            self.trainer.strategy.barrier("tiny-base")
        return model

    def save_preprocessing(self, path) -> None:
        """Write what turns inputs into model inputs next to the adapter (the tokenizer; processors too)."""
        self.tokenizer.save_pretrained(path)

    def export_adapter(self, path):
        """Save the PEFT adapter (adapter_config.json, adapter_model.safetensors), the tokenizer and the data's
        prompt layout (``prompt.json``), once, on rank 0. Called on every rank: a sharded (FSDP2) adapter is
        gathered into one first."""
        if self.lora is None:
            return None
        state = self.full_state_dict()
        strategy = self.trainer.strategy
        if getattr(strategy, "zero_stage_3", False):
            # ZeRO-3 partitions every parameter: gather the trainable (adapter) ones for the save.
            # Not yet run on a GPU; see the scale-out notes.
            import deepspeed

            trainable = [p for p in self.model.parameters() if p.requires_grad]
            with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
                if self.trainer.is_global_zero:
                    state = {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        if not self.trainer.is_global_zero:
            return None
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, state_dict=state)
        self.save_preprocessing(path)
        datamodule = self.trainer.datamodule
        spec = datamodule.prompt_spec() if datamodule is not None else None
        if spec is not None:
            spec["generation"] = self.generation_settings()
            import json

            (path / "prompt.json").write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def generation_settings(self) -> dict:
        """The ``generate`` arguments this module predicts with (greedy), written into ``prompt.json``."""
        return {"do_sample": False}

    def write_generations(self, rows: list[dict], columns: list[str], images: list | None = None) -> None:
        """Append sample generations to ``generations.jsonl`` in the run directory and log them as the W&B
        table ``val/generations`` (with an image column when ``images`` are given). Rank 0 only."""
        import json
        from pathlib import Path

        if not self.trainer.is_global_zero or not rows:
            return
        path = Path(self.trainer.default_root_dir) / "generations.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                data = [[r[c] for c in columns] for r in rows]
                cols = list(columns)
                if images is not None:
                    import wandb

                    cols.append("image")
                    data = [row + [wandb.Image(img)] for row, img in zip(data, images)]
                logger.log_table(key="val/generations", columns=cols, data=data)
