"""Vision-language instruction SFT (MISSION §3): an image and a question in, an answer out; the loss is on
answer tokens only (the DataModule masks system text, user text, chat markup and image tokens).

Model: ``AutoModelForImageTextToText`` (Qwen2.5-VL: ``Qwen2_5_VLForConditionalGeneration``) with its tokenizer
and image processor (:mod:`modules.processor`). QLoRA as in production: the language model 4-bit NF4 through
bitsandbytes, the vision tower and projector unquantized and frozen, LoRA on the language model's linear
layers; ``vision: lora`` adapts the vision tower's linear layers too. bf16 LoRA without quantization works the
same way.

Evaluation: answers are generated for test/predict records and their alert decision is parsed
(:func:`modules.alerts.parse_alert`); with gold ``alert`` fields the test reports ``test/accuracy``,
``precision``, ``recall``, ``f1``, ``false_positives``, ``false_negatives`` and ``unparseable``. A few fixed
validation images are answered every validation epoch (``generations.jsonl``, W&B table with the images).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

from modules.adapter import AdapterBackbone
from modules.alerts import AlertStats, parse_alert
from modules.backbone import BackboneSpec, LoraSpec, QuantSpec, apply_lora
from modules.base import OptimizerCallable, TuneloopModule, default_optimizer
from modules.generation import SampleGenerations, eval_mode, greedy_generate
from modules.optim import SchedulerSpec
from modules.token_loss import StepTokenLoss, TokenMeanNLL, predicting_positions, token_nll

# Child modules that hold the vision half of common image-text models (tower and projector).
VISION_MODULE_NAMES = ("visual", "vision_tower", "vision_model", "multi_modal_projector")
# What 4-bit quantization leaves in full precision by default (matched from the start of a module path).
VISION_SKIP_MODULES = ["model.visual", "model.vision_tower", "model.vision_model", "model.multi_modal_projector"]


def vision_quant(quant: QuantSpec | None) -> QuantSpec | None:
    """``quant`` with the vision tower and projector kept unquantized when it names no ``skip_modules``."""
    if quant is None or quant.skip_modules:
        return quant
    return QuantSpec(**{**quant.__dict__, "skip_modules": list(VISION_SKIP_MODULES)})


def vision_prefixes(model: nn.Module) -> list[str]:
    """Dotted names of the vision tower and projector modules of ``model`` (outermost matches only)."""
    found: list[str] = []
    for name, _ in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in VISION_MODULE_NAMES and not any(name.startswith(p + ".") for p in found):
            found.append(name)
    return found


def lora_target_regex(model: nn.Module, include_vision: bool) -> str:
    """PEFT ``target_modules`` regex for the linear layers of the language model (and of the vision tower and
    projector when ``include_vision``), never the output head. Layer indices are generalized
    (``layers\\.\\d+\\.self_attn\\.q_proj``), so the pattern stays short for any depth; 4-bit
    (bitsandbytes) linear layers match too."""
    vision = vision_prefixes(model)
    head = model.get_output_embeddings()
    patterns: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is head:
            continue
        if not include_vision and any(name.startswith(p + ".") for p in vision):
            continue
        parts = name.split(".")
        patterns.add(r"\.".join(r"\d+" if part.isdigit() and i < len(parts) - 1 else re.escape(part)
                                 for i, part in enumerate(parts)))
    if not patterns:
        raise ValueError(f"{type(model).__name__} has no linear layers to adapt")
    return "(?:" + "|".join(sorted(patterns)) + ")"


@runtime_checkable
class VisionInstructionData(Protocol):
    """What the vision-language module reads from its DataModule
    (``datamodules.vision_instruction.VisionInstructionDataModule``)."""

    def sample_batch(self) -> dict | None: ...

    def loss_token_counts(self, split: str) -> list[int]: ...


class VisionLanguageModule(TuneloopModule):
    """Fine-tune an image-text-to-text model on image + instruction records (LoRA, QLoRA or full).

    Args:
        backbone: Pretrained model and processor (tokenizer + image processor), or the tiny debug model.
        lora: LoRA adapter. ``target_modules: all-linear`` means the language model's linear layers (plus the
            vision tower's with ``vision: lora``). ``null`` = full fine-tuning of the language model.
        quant: Load the language model 4-bit with bitsandbytes (QLoRA; needs ``lora``). The vision tower and
            projector stay unquantized: ``skip_modules`` defaults to them.
        vision: ``frozen`` (default): the vision tower and projector are not trained; ``lora``: LoRA on the
            vision tower's linear layers too.
        max_new_tokens: Tokens generated per answer (test, predict, sample generations).
        optimizer: Optimizer factory called with parameter groups.
        scheduler: Learning-rate schedule over all optimizer steps.
    """

    # The arguments shared with CausalLMModule repeat on purpose: each is a CLI key of this class, and
    # jsonargparse reads a module's options from its own signature.
    def __init__(
        self,
        backbone: BackboneSpec,
        lora: LoraSpec | None = None,
        quant: QuantSpec | None = None,
        vision: Literal["frozen", "lora"] = "frozen",
        max_new_tokens: int = 128,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: SchedulerSpec | None = None,
    ):
        if vision == "lora" and lora is None:
            raise ValueError("model.vision=lora needs model.lora (the adapter settings)")
        super().__init__(optimizer=optimizer, scheduler=scheduler)
        self.save_hyperparameters(ignore=["optimizer"])
        self.plain_hyperparameters()
        self.backbone, self.lora, self.quant, self.vision = backbone, lora, quant, vision
        self.max_new_tokens = max_new_tokens
        from modules.processor import load_vision_processor

        # The processor (tokenizer + image processor); for a tiny model also the config token ids pointing at
        # the local tokenizer's copies of the family's special tokens.
        self.processor, self._config_token_ids = load_vision_processor(backbone)
        self.tokenizer = self.processor.tokenizer
        self.adapter = AdapterBackbone(backbone, lora, quant, self.processor)
        self.step_loss = StepTokenLoss()
        self.val_nll, self.test_nll = TokenMeanNLL(), TokenMeanNLL()
        self.test_alerts = AlertStats()
        self._mm_types = False  # whether the model takes mm_token_type_ids (set in configure_model)
        self._vision_dtype: torch.dtype | None = None
        self.strict_loading = lora is None  # LoRA checkpoints hold the adapter only

    @classmethod
    def planned_quant(cls, quant: QuantSpec | None) -> QuantSpec | None:
        """The vision tower and projector stay unquantized unless ``quant.skip_modules`` says otherwise."""
        return vision_quant(quant)

    @classmethod
    def planned_lora(cls, model: nn.Module, lora: LoraSpec | None, init_args: dict) -> LoraSpec | None:
        """``all-linear`` means the language model's linear layers (and the vision tower's with ``vision: lora``)."""
        if lora is None or lora.target_modules != "all-linear":
            return lora
        include_vision = (init_args.get("vision") or "frozen") == "lora"
        return LoraSpec(**{**lora.__dict__, "target_modules": lora_target_regex(model, include_vision)})

    # ----- wiring -----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.require_data(VisionInstructionData, "datamodules.vision_instruction.VisionInstructionDataModule")

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForImageTextToText

        quant = self.planned_quant(self.quant)
        model = self.adapter.build(self, AutoModelForImageTextToText, self.tokenizer, quant=quant,
                                   **self._config_token_ids)
        lora = self.planned_lora(model, self.lora, {"vision": self.vision})
        if lora is None:
            for prefix in vision_prefixes(model):  # full fine-tuning trains the language model only
                model.get_submodule(prefix).requires_grad_(False)
        model = apply_lora(model, lora, task_type=self.peft_task_type, quantized=quant is not None,
                           gradient_checkpointing=self.backbone.gradient_checkpointing)
        self.model = self.shard(model)
        # Qwen2-VL-family models place image tokens in 3D (multimodal RoPE) only when told which tokens are
        # image tokens; other families do not take the argument.
        base = model.get_base_model() if lora is not None else model
        self._mm_types = "mm_token_type_ids" in inspect.signature(type(base).forward).parameters

    def vision_inputs(self, batch: dict, prefix: str = "") -> dict:
        """Image inputs of the model for ``input_ids`` (``prefix=""``) or for the generation prompts
        (``prefix="prompt_"``)."""
        inputs = {"pixel_values": batch["pixel_values"].to(self.dtype_of_vision()),
                  "image_grid_thw": batch["image_grid_thw"]}
        if self._mm_types:
            inputs["mm_token_type_ids"] = batch[f"{prefix}mm_token_type_ids"]
        return inputs

    # ----- loss -------------------------------------------------------------------------------------------
    def forward(self, batch: dict, logits_to_keep: int | torch.Tensor = 0) -> torch.Tensor:
        """Logits (batch, seq, vocab) of the sequences with their images; at ``logits_to_keep`` only
        (transformers' argument; 0: every position)."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                          logits_to_keep=logits_to_keep, **self.vision_inputs(batch)).logits

    def response_nll(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed NLL (fp32) of the batch's response tokens and their number, with the head applied only at the
        positions that predict one (``modules.token_loss.predicting_positions``)."""
        positions = predicting_positions(batch["labels"])
        return token_nll(self(batch, logits_to_keep=positions), batch["labels"], positions=positions)

    def dtype_of_vision(self) -> torch.dtype:
        """Dtype the vision tower computes in (pixel values are cast to it)."""
        if self._vision_dtype is None:
            self._vision_dtype = next((p.dtype for n, p in self.model.named_parameters()
                                       if any(f".{v}." in n for v in VISION_MODULE_NAMES) and p.is_floating_point()),
                                      torch.float32)
        return self._vision_dtype

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # The causal-LM loss: a token mean over the whole optimizer step (see modules.token_loss).
        return self.step_loss.training_step(self, batch, batch_idx, self.response_nll(batch)[0])

    def generation_settings(self) -> dict:
        """Greedy decoding of ``max_new_tokens`` (written into ``prompt.json``)."""
        return {"do_sample": False, "max_new_tokens": self.max_new_tokens}

    # ----- evaluation -------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_nll.update(*self.response_nll(batch))

    def on_validation_epoch_end(self) -> None:
        self.val_nll.log_to(self, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_nll.update(*self.response_nll(batch))
        rows = self.prediction_rows(batch, with_reference=True)
        self._eval_outputs += rows
        gold = [r["target_alert"] for r in rows]
        if all(g is not None for g in gold):
            self.test_alerts.update([r["pred_alert"] for r in rows], gold)

    def on_test_epoch_end(self) -> None:
        self.test_nll.log_to(self, "test")
        values = self.test_alerts.compute()
        if int(values["n"]) > 0:
            self.log_dict({f"test/{k}": v.float() for k, v in values.items() if k != "n"}, sync_dist=False)
        self.test_alerts.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return self.prediction_rows(batch, with_reference=any(batch["reference"]) or
                                    any(a is not None for a in batch["alert"]))

    def generate(self, batch: dict, max_new_tokens: int) -> list[str]:
        """Greedy answers to the batch's left-padded prompts with their images, decoded without special tokens."""
        return greedy_generate(self.model, self.tokenizer, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens,
                               synced_gpus=self.device_mesh is not None, **self.vision_inputs(batch, "prompt_"))

    def prediction_rows(self, batch: dict, with_reference: bool) -> list[dict]:
        """One JSON-able row per record: the generated answer and its parsed alert decision (``null`` when the
        answer states none), with the reference answer and the gold decision when known."""
        texts = self.generate(batch, self.max_new_tokens)
        rows = [{"id": rid, "type": t, "generation": text, "pred_alert": parse_alert(text)}
                for rid, t, text in zip(batch["id"], batch["type"], texts)]
        if with_reference:
            for row, ref, alert in zip(rows, batch["reference"], batch["alert"]):
                row["reference"] = ref
                row["target_alert"] = alert
        return rows

    def save_figures(self, stage: str, outputs: list, out_dir: Path) -> list[Path]:
        """Alert confusion matrix (rows: gold; columns: predicted, with an ``unparseable`` column)."""
        rows = self.prediction_records(outputs)
        rows = [r for r in rows if r.get("target_alert") is not None]
        if not rows:
            return []
        import numpy as np

        from modules import plots

        col = {False: 0, True: 1, None: 2}
        cm = np.zeros((3, 3), dtype=np.int64)
        for r in rows:
            cm[int(r["target_alert"]), col[r["pred_alert"]]] += 1
        out_dir.mkdir(parents=True, exist_ok=True)
        return [plots.confusion_matrix_plot(cm, ["no alert", "alert", "unparseable"],
                                            out_dir / f"{stage}_alert_confusion_matrix.png",
                                            title=f"{stage}: alert decisions")]

    # ----- generations during training ---------------------------------------------------------------------
    def sample_generations(self) -> SampleGenerations | None:
        """Answers (and parsed alerts) for the first validation images, with the images (generations.jsonl, a
        W&B table). Generated on rank 0, or on every rank when the model is sharded."""
        if not self.trainer.is_global_zero and self.device_mesh is None:
            return None
        batch = self.trainer.datamodule.sample_batch()
        if batch is None:
            return None
        images = batch.pop("images")
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with eval_mode(self.model):
            texts = self.generate(batch, self.max_new_tokens)
        rows = [{"epoch": self.current_epoch, "step": self.global_step, "id": rid, "generation": text,
                 "pred_alert": parse_alert(text), "reference": ref, "target_alert": alert}
                for rid, text, ref, alert in zip(batch["id"], texts, batch["reference"], batch["alert"])]
        return SampleGenerations(rows, ["epoch", "step", "id", "generation", "pred_alert", "reference", "target_alert"],
                                 images=images)
