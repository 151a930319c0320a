"""Encoder tasks (MISSION §4) on ``AutoModelForSequenceClassification``: one module, four heads.

======== ======== ==================== =========================================================
task     outputs  loss                 metrics (``val/…``, ``test/…``)
======== ======== ==================== =========================================================
binary   1 logit  BCEWithLogits        accuracy, precision, recall, f1
multicl. C logits cross-entropy        accuracy, f1_macro, f1_micro
multilab L logits BCEWithLogits        f1_macro, f1_micro, partial_score, exact_match, label_accuracy
regress. T values MSE (standardized)   mse, rmse, mae, r2 (+ per target), in original units
======== ======== ==================== =========================================================

What differs between the tasks lives in their head (``modules/heads.py``), picked once from the DataModule's
task; this module only wires the encoder, the head and the metrics into Lightning's steps. The task and its
label names come from the DataModule, so a recipe states them once; they are recorded in the checkpoint
(``checkpoint["tuneloop"]``). Regression targets are standardized with the training split's mean and standard
deviation (head buffers, so a checkpoint predicts in original units on its own).

Every run hands over a standalone model (:meth:`EncoderModule.export_model`): ``save_pretrained`` of an
``AutoModelForSequenceClassification`` (LoRA merged) that predicts exactly what the module predicts, with the
labels as ``id2label`` and ``problem_type`` set so that ``transformers.pipeline("text-classification")`` applies
the head's activation; a regression head's standardization is folded into the output layer. A LoRA run also
exports its adapter (:meth:`EncoderModule.export_adapter`, on the tiny debug base saved in ``<run>/base_model``).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection

from modules.adapter import AdapterBackbone, gathered_state, standalone_copy, write_dir_atomically
from modules.backbone import BackboneSpec, LoraSpec, apply_lora, build_model, load_tokenizer
from modules.base import OptimizerCallable, TuneloopModule, default_optimizer
from modules.heads import EncoderHead, NonFiniteRows, head_class
from modules.metrics import compute_and_reset
from modules.optim import SchedulerSpec

log = logging.getLogger(__name__)


@runtime_checkable
class EncoderData(Protocol):
    """What the module reads from its DataModule (``datamodules.encoder.EncoderDataModule``); when fitting
    it also reads ``train_targets``, the training split's encoded targets (a property that exists only after
    ``setup('fit')``, so it is left out of this runtime check)."""

    task: str
    label_names: list[str]
    target_stats: tuple[torch.Tensor, torch.Tensor] | None


class EncoderModule(TuneloopModule):
    """Fine-tune a BERT-style encoder with a classification or regression head (full or LoRA).

    Args:
        backbone: Pretrained model and tokenizer (or the tiny debug model).
        lora: LoRA adapter on the encoder; the task head stays fully trainable. ``null`` = full fine-tuning.
        threshold: Probability above which a binary/multi-label output counts as positive.
        pos_weight: Weight of positive examples in BCEWithLogits (binary, multi-label): ``auto`` =
            negatives / positives of each label in the training split (for imbalanced labels), a list with
            one weight per label, or ``null`` for none.
        report_baseline: Also log the label-frequency baseline on validation (``val/baseline_<metric>``):
            majority class, labels more frequent than 50%, or the training mean for regression.
        optimizer: Optimizer factory called with parameter groups (biases and norms get no weight decay).
        scheduler: Learning-rate schedule over all optimizer steps.
    """

    peft_task_type = "SEQ_CLS"
    exports_model = True  # model/: AutoModelForSequenceClassification (export_model)

    # State-dict keys of the head's buffers in checkpoints written before the heads were their own modules.
    LEGACY_KEYS = {"bce_pos_weight": "head.pos_weight", "target_mean": "head.target_mean",
                   "target_std": "head.target_std"}

    def __init__(
        self,
        backbone: BackboneSpec,
        lora: LoraSpec | None = None,
        threshold: float = 0.5,
        pos_weight: Literal["auto"] | list[float] | None = None,
        report_baseline: bool = True,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: SchedulerSpec | None = None,
    ):
        super().__init__(optimizer=optimizer, scheduler=scheduler)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"model.threshold must be in (0, 1), got {threshold}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.plain_hyperparameters()
        self.backbone = backbone
        self.lora = lora
        self.threshold = threshold
        self.pos_weight = pos_weight
        self.report_baseline = report_baseline
        self.tokenizer = load_tokenizer(backbone)
        # LoRA: built, checkpointed (adapter and head only) and exported as the causal-LM adapters are.
        self.adapter = AdapterBackbone(backbone, lora, None, self.tokenizer) if lora is not None else None
        self.strict_loading = lora is None
        # Chosen in setup, from the DataModule's task.
        self.head: EncoderHead | None = None
        # The head's metrics per split ("val", "test"), their keys prefixed "val/", "test/".
        self.split_metrics = nn.ModuleDict()
        # Records with non-finite predictions per split: any makes the split's metrics nan (a diverged model).
        self.split_nonfinite = nn.ModuleDict({"val": NonFiniteRows(), "test": NonFiniteRows()})
        # Label-frequency baseline on validation (report_baseline, when fitting): metrics and the prediction row.
        self.baseline_metrics: MetricCollection | None = None
        self.register_buffer("baseline_row", None, persistent=False)

    # ----- wiring to the data ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.require_data(EncoderData, "datamodules.encoder.EncoderDataModule")
        if self.head is not None:  # already wired (e.g. test after fit in one process)
            return
        fitting = stage == "fit"
        self.head = head_class(dm.task).from_data(
            dm.label_names, threshold=self.threshold, pos_weight=self.pos_weight,
            train_targets=dm.train_targets if fitting else None, target_stats=dm.target_stats)
        metrics = self.head.metrics()
        self.split_metrics.update({"val": metrics.clone(prefix="val/"), "test": metrics.clone(prefix="test/")})
        if self.report_baseline and fitting:
            self.baseline_metrics = metrics.clone(prefix="val/baseline_")
            self.baseline_row = self.head.frequency_baseline(dm.train_targets, self.head.num_outputs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # What the head was trained for travels with the weights (the DataModule supplies it at load time).
        checkpoint["tuneloop"] = {**checkpoint.get("tuneloop", {}), "task": self.head.task,
                                  "label_names": self.head.label_names}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})  # sharded strategies hand over the checkpoint without it
        for old, new in self.LEGACY_KEYS.items():
            if old in state:
                state[new] = state.pop(old)

    @property
    def target_mean(self) -> torch.Tensor:
        """Regression: the training split's mean per target (T,) (the head's buffer)."""
        return self.head.target_mean

    @property
    def target_std(self) -> torch.Tensor:
        """Regression: the training split's standard deviation per target (T,) (the head's buffer)."""
        return self.head.target_std

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForSequenceClassification

        if self.adapter is not None:  # a tiny random base is saved to <run>/base_model: the adapter's base
            model = self.adapter.build(self, AutoModelForSequenceClassification, self.tokenizer,
                                       num_labels=self.head.num_outputs)
        else:
            model = build_model(AutoModelForSequenceClassification, self.backbone, self.tokenizer,
                                num_labels=self.head.num_outputs)
        self.model = self.shard(apply_lora(model, self.lora, task_type=self.peft_task_type))

    # ----- forward, loss, predictions -------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        """Logits (batch, outputs) for binary/multi-class/multi-label; standardized values for regression."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return self.model(**inputs).logits

    def predictions(self, out: torch.Tensor) -> torch.Tensor:
        """Probabilities (binary (N,), multi-class (N,C), multi-label (N,L)) or values in original units (N,T)."""
        return self.head.predict(out.float())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.head.loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["id"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch)
        n = len(batch["id"])
        self.log("val/loss", self.head.loss(out, batch["labels"]), prog_bar=True, sync_dist=True, batch_size=n)
        target, preds = self.head.metric_target(batch["labels"]), self.predictions(out)
        self.split_metrics["val"].update(preds, target)
        self.split_nonfinite["val"].update(preds)
        if self.baseline_metrics is not None:
            # The same prediction for every record.
            self.baseline_metrics.update(self.head.baseline_predictions(self.baseline_row, n), target)

    def on_validation_epoch_end(self) -> None:
        # compute() syncs metric states across processes; sync_dist then averages identical values (no-op).
        self.log_dict(self._split_values("val"), sync_dist=True)
        if self.baseline_metrics is not None:
            self.log_dict(compute_and_reset(self.baseline_metrics), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch)
        n = len(batch["id"])
        self.log("test/loss", self.head.loss(out, batch["labels"]), sync_dist=True, batch_size=n)
        preds, target = self.predictions(out), self.head.metric_target(batch["labels"])
        self.split_metrics["test"].update(preds, target)
        self.split_nonfinite["test"].update(preds)
        self._eval_outputs.append({"id": batch["id"], "pred": preds.cpu(), "target": batch["labels"].cpu()})

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = {"id": batch["id"], "pred": self.predictions(self(batch)).cpu()}
        if "labels" in batch:
            out["target"] = batch["labels"].cpu()
        return out

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._split_values("test"), sync_dist=True)

    def _split_values(self, split: str) -> dict[str, float]:
        """The split's metrics (a collective), all nan when any record's prediction was non-finite."""
        values = compute_and_reset(self.split_metrics[split])
        bad = int(compute_and_reset_count(self.split_nonfinite[split]))
        if bad:
            log.warning(f"{split}: {bad} records have non-finite model outputs; every {split} metric is reported as nan")
            values = {key: math.nan for key in values}
        return values

    # ----- artifacts --------------------------------------------------------------------------------
    def prediction_records(self, outputs: list[dict]) -> list[dict]:
        """One JSON-able row per record from step outputs (``id``, ``pred`` and, when known, ``target``); a record
        whose output is non-finite gets ``"pred": null, "nonfinite": true`` (see ``EncoderHead.prediction_row``)."""
        rows = []
        for out in outputs:
            preds = out["pred"].numpy()
            targets = out["target"].numpy() if "target" in out else None
            for i, rid in enumerate(out["id"]):
                row = {"id": rid, **self.head.prediction_row(preds[i])}
                if targets is not None:
                    row.update(self.head.describe_target(targets[i]))
                rows.append(row)
        bad = sum(1 for row in rows if row.get("nonfinite"))
        if bad:
            log.warning(f"{bad} of {len(rows)} predictions are non-finite (a diverged model): written as pred null, "
                        "nonfinite true")
        return rows

    def save_figures(self, stage: str, outputs: list[dict], out_dir: Path) -> list[Path]:
        """Confusion matrix (classification) or parity plot (regression) of ``outputs`` as PNG."""
        if not outputs or "target" not in outputs[0]:
            return []
        preds = np.concatenate([o["pred"].numpy() for o in outputs])
        targets = np.concatenate([o["target"].numpy() for o in outputs])
        return self.head.figures(stage, preds, targets, out_dir)


    # ----- export -----------------------------------------------------------------------------------------
    def export_adapter(self, path: Path) -> Path | None:
        """LoRA: the adapter (PEFT format) with the tokenizer; a regression head's standardization folded into its
        output layer, as in :meth:`export_model`. Every rank calls it (a sharded adapter is gathered); rank 0
        writes."""
        if self.adapter is None:
            return None
        return self.adapter.export(self, path, None, transform=self._folded_state)

    def export_model(self, path: Path) -> Path | None:
        """A standalone ``AutoModelForSequenceClassification`` (``save_pretrained``, LoRA merged) with the tokenizer:
        ``id2label``/``label2id`` are the head's outputs (binary: the positive class), ``problem_type`` makes
        transformers' loss and the text-classification pipeline apply the head's activation (binary and
        multi-label: sigmoid, multi-class: softmax, regression: none), and a regression head's standardization is
        folded into the output layer, so the logits are values in original units (checked on a probe input).
        The config also records ``tuneloop`` (task, label names, threshold). Every rank calls it (a sharded model
        is gathered); rank 0 writes."""
        state = gathered_state(self, trainable_only=False)
        if not self.trainer.is_global_zero:
            return None
        model = standalone_copy(self.model, state)
        self._fold_checked(model)
        labels = self.head.export_labels()
        model.config.update({"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)},
                             "problem_type": self.head.problem_type,
                             "tuneloop": {"task": self.head.task, "label_names": self.head.label_names,
                                          "threshold": self.threshold}})

        def fill(tmp: Path) -> None:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

        return write_dir_atomically(path, fill)

    def _folded_state(self, state: dict) -> dict:
        """``state`` (of ``self.model``) with the head's affine map folded into the output layer's tensors (every
        copy PEFT keeps of it)."""
        affine = self.head.output_affine()
        if affine is None:
            return state
        scale, shift = (t.detach().cpu() for t in affine)
        target = output_layer_name(self.model, self.head.num_outputs)
        state = dict(state)
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Linear) and plain_name(name) == target and f"{name}.weight" in state:
                weight, bias = state[f"{name}.weight"], state.get(f"{name}.bias")
                if bias is None:
                    raise ValueError(f"output layer {name} has no bias: a regression standardization cannot be folded")
                state[f"{name}.weight"], state[f"{name}.bias"] = fold_affine(weight, bias, scale, shift)
        return state

    def _fold_checked(self, model: nn.Module) -> None:
        """Fold the head's affine map into ``model``'s (plain, CPU, eval) output layer and check on a probe input
        that the outputs became ``scale * before + shift``; an architecture whose output layer is not the last
        linear map of its head fails here rather than exporting wrong values."""
        affine = self.head.output_affine()
        if affine is None:
            return
        scale, shift = (t.detach().cpu() for t in affine)
        name = output_layer_name(model, self.head.num_outputs)
        layer = model.get_submodule(name)
        if layer.bias is None:
            raise ValueError(f"output layer {name} has no bias: a regression standardization cannot be folded")
        probe = self.tokenizer(["probe: 1.0", "a second, longer probe input"], return_tensors="pt", padding=True)
        with torch.no_grad():
            before = model(**probe).logits.float()
            layer.weight.data, layer.bias.data = fold_affine(layer.weight.data, layer.bias.data, scale, shift)
            after = model(**probe).logits.float()
        expected = before * scale + shift
        tol = 1e-4 if layer.weight.dtype == torch.float32 else 1e-2
        if not torch.allclose(after, expected, rtol=tol, atol=tol * float(expected.abs().max())):
            raise RuntimeError(f"folding the regression standardization into {type(model).__name__}.{name} did not "
                               f"give the module's predictions ({after.tolist()} vs {expected.tolist()})")

def compute_and_reset_count(metric: NonFiniteRows) -> int:
    """``metric.compute()`` as an int (a collective), then ``metric.reset()``."""
    try:
        return int(metric.compute())
    finally:
        metric.reset()


def frequency_baseline(task: str, train_targets: np.ndarray, num_outputs: int) -> torch.Tensor:
    """The prediction a model that saw only label frequencies would make, for every record.

    binary: P(positive) (1,); multiclass: one-hot of the majority class (C,); multilabel: per-label frequency
    (L,), so labels present in more than half the records are predicted; regression: the training mean (T,).
    """
    return head_class(task).frequency_baseline(train_targets, num_outputs)


def plain_name(name: str) -> str:
    """A module's name in the plain transformers model: PEFT's wrapping (``base_model.model.``,
    ``modules_to_save.default``, ``original_module``, ``base_layer``) left out."""
    name = re.sub(r"^base_model\.model\.", "", name)
    return re.sub(r"\.(modules_to_save\.[^.]+|original_module|base_layer)(?=\.|$)", "", name)


def output_layer_name(model: nn.Module, outputs: int) -> str:
    """The plain name of a sequence classifier's output layer: its last ``nn.Linear`` with ``outputs`` outputs
    (BERT and DistilBERT ``classifier``, RoBERTa and ELECTRA ``classifier.out_proj``, decoders ``score``)."""
    names = [plain_name(n) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == outputs]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear layer with {outputs} outputs to fold into")
    return names[-1]


def fold_affine(weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor):
    """``y = scale * (W x + b) + shift`` as one linear map: ``W' = diag(scale) W`` (out, in), ``b' = scale * b + shift``
    (out,); computed in float32, returned in the tensors' dtype."""
    w = weight.float() * scale.float()[:, None]
    b = bias.float() * scale.float() + shift.float()
    return w.to(weight.dtype), b.to(bias.dtype)
