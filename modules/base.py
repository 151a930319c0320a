"""The one thin base every task module shares: optimizer wiring, the LR schedule, FSDP2 sharding, and the
seams the trainer's callbacks and the CLI use (declared here, so nothing probes a module with ``hasattr``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch

from modules.optim import AdamW, SchedulerSpec, param_groups

if TYPE_CHECKING:
    from modules.adapter import AdapterBackbone

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]


class DataModuleMismatch(TypeError):
    """The recipe pairs a task module with a DataModule it cannot read (a config mistake, reported in one line)."""


@runtime_checkable
class PromptLayout(Protocol):
    """A DataModule whose records become text prompts: it describes the layout for ``prompt.json``."""

    def prompt_spec(self) -> dict | None: ...


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """AdamW with the settings most fine-tuning recipes start from, on the fused kernel where the device has one
    (``modules.optim.AdamW``)."""
    return AdamW(params, lr=2e-5, weight_decay=0.01)


class TuneloopModule(pl.LightningModule):
    """Base of the task modules: ``self.model`` is built in ``configure_model``; the optimizer is injected.

    Subclasses set ``self.model`` (an ``nn.Module``) and implement the steps. The schedule's length is
    ``trainer.estimated_stepping_batches``: dataset size / global batch x epochs (or ``max_steps``).

    What the trainer floor relies on, with defaults here: ``tokenizer``/``processor`` (handed to the
    DataModule by the CLI), ``has_adapter``/``export_adapter`` (adapter export), ``pop_eval_outputs``,
    ``prediction_records`` and ``save_figures`` (predictions.jsonl and plots), ``sample_generations``
    (generations.jsonl) and ``restored_from`` (which training state the loaded weights are).
    """

    #: What turns raw text into model inputs; the CLI hands it to the DataModule.
    tokenizer: Any = None
    #: Image + text models: the processor (tokenizer and image processor), else ``None``.
    processor: Any = None
    #: ``global_step`` and ``epoch`` of the last checkpoint loaded into the module.
    restored_from: dict | None = None
    #: Modules built on a pretrained backbone that may train through a PEFT adapter hold one: adapter-only
    #: checkpoints and the adapter export go through it.
    adapter: AdapterBackbone | None = None

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

    # ----- seams used by the trainer's callbacks and CLI ------------------------------------------------------
    #: Whether ``export_model`` hands over a standalone transformers model (``<run dir>/model/``).
    exports_model: ClassVar[bool] = False

    def export_model(self, path: Path) -> Path | None:
        """Write a standalone transformers model (``save_pretrained``, an adapter merged into its base) to
        ``path``, for modules with ``exports_model``: every rank calls it (a sharded model is gathered), rank 0
        writes; ``None`` when nothing is written."""
        return None

    @property
    def has_adapter(self) -> bool:
        """Whether the module trains a PEFT adapter that ``export_adapter`` writes."""
        return self.adapter is not None and self.adapter.lora is not None

    def export_adapter(self, path: Path) -> Path | None:
        """Write the trained adapter, its preprocessing and the data's prompt layout (``prompt.json``, with
        ``generation_settings``) to ``path``: every rank calls it, rank 0 writes; ``None`` when nothing is
        exported."""
        if self.adapter is None:
            return None
        dm = self.trainer.datamodule
        prompt = dm.prompt_spec() if isinstance(dm, PromptLayout) else None
        if prompt is not None:
            prompt["generation"] = self.generation_settings()
        return self.adapter.export(self, path, prompt)

    def generation_settings(self) -> dict:
        """The ``generate`` arguments this module predicts with, written into ``prompt.json``."""
        return {"do_sample": False}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.adapter is not None:
            self.adapter.on_save_checkpoint(self.model, checkpoint)

    def prediction_records(self, outputs: list) -> list[dict]:
        """JSON rows (one per record, with an ``id``) from test outputs (rows) or predict outputs (lists of rows
        per batch)."""
        return [row for item in outputs for row in (item if isinstance(item, list) else [item])]

    def save_figures(self, stage: str, outputs: list, out_dir: Path) -> list[Path]:
        """Plots of the evaluation ``outputs`` written under ``out_dir``; their paths."""
        return []

    def sample_generations(self):
        """Answers to fixed validation prompts after a validation epoch (a ``modules.generation.SampleGenerations``)
        or ``None``. Called on every rank; a sharded model generates on every rank, rows come from rank 0."""
        return None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.restored_from = {"global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch")}
        if self.adapter is not None:
            self.adapter.on_load_checkpoint(self.model, checkpoint)

    def require_data(self, protocol: type, class_path: str):
        """The attached DataModule, checked once against the ``protocol`` this module reads it through."""
        dm = self.trainer.datamodule
        if not isinstance(dm, protocol):
            missing = [n for n in protocol.__annotations__ if not hasattr(dm, n)] + [
                n for n in vars(protocol) if callable(vars(protocol)[n]) and not n.startswith("_") and not hasattr(dm, n)]
            got = type(dm).__name__ if dm is not None else "none"
            raise DataModuleMismatch(f"{type(self).__name__} needs a DataModule such as {class_path} "
                                     f"(data.class_path); got {got}, which lacks {', '.join(missing)}")
        return dm

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
