"""Instruction data for causal LMs (MISSION §1, §2): Alpaca, chat and intent records -> token ids with the
loss on response tokens only.

Formats:
  ``alpaca``  {"instruction", "input"?, "output"} rendered with the Alpaca template of MISSION §2;
  ``chat``    {"messages": [{"role", "content"}, ...]} rendered with the tokenizer's chat template;
  ``intent``  {text_field, label_field} rendered with an instruction listing the allowed labels; the label
              is the response (generative classification).
Records are validated before training (errors name file, line, field); tokenization is a ``datasets.map``
and is cached on disk. Over-long samples follow ``overlong`` (truncate the prompt first, then the
response; or drop; or error) and are counted and reported.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Literal

import numpy as np
import torch

from datamodules.base import ResumableSampler, TuneloopDataModule
from datamodules.chat_templates import resolve_chat_template
from datamodules.records import DataConfigError, RecordError, RecordFile, check_text, require_fields
from datamodules.sources import DataSource, MixStopping, describe, load_source
from datamodules.templates import (
    ALPACA_NO_INPUT_TEMPLATE,
    ALPACA_TEMPLATE,
    INTENT_INSTRUCTION,
    INTENT_TEMPLATE,
    Segment,
    adds_bos,
    alpaca_prompt,
    chat_segments,
    check_messages,
    intent_prompt,
    loss_token_count,
    tokenize_segments,
    truncate,
)
from datamodules.batch import BatchSpec
from datamodules.collate import pack_causal, pad_causal

class InstructionDataModule(TuneloopDataModule):
    """Instruction-tuning and generative-classification data for causal LMs.

    Args:
        format: ``alpaca``, ``chat`` or ``intent`` (see the module docstring).
        train_file: Training records: a .jsonl, .csv or .parquet file, a dataset ``hf://owner/name?split=train``
            (also ``subset``, ``revision``, ``data_files``), or a mix ``[{source: ..., weight: ...}, ...]``
            (``datamodules.sources``).
        val_file: Validation records (a file, dataset or mix, as ``train_file``).
        test_file: Test records (``tuneloop test``).
        predict_file: Records to predict (default: the test file).
        mix_stopping: A mix ends when every source has been drawn in full (``all_exhausted``: small sources repeat)
            or when the first runs out (``first_exhausted``).
        chat_template: Chat format: the template that renders ``messages``, overriding the tokenizer's: a bundled
            name (``alpaca``, ``chatml``, ``llama-2``, ``exaone``; ``datamodules.chat_templates``) or a Jinja file.
            The same template renders prompts at generation and goes into ``prompt.json``.
        text_field: Intent format: field with the utterance.
        label_field: Intent format: field with the label.
        labels: Intent format: the allowed labels, in order (the prompt lists them).
        intent_instruction: Intent format: instruction text; ``{labels}`` is replaced by the label list.
        id_field: Field that identifies a record in predictions (row number when absent).
        cutoff_len: Maximum tokens per sample (prompt + response).
        overlong: What happens to a sample longer than ``cutoff_len``: ``truncate`` (prompt from the left
            first, then the response from the right; a sample left with no response token is dropped),
            ``drop`` (skip it) or ``error`` (stop, naming the record).
        group_by_length: Batch samples of similar length together (less padding); order stays seeded.
        packing: Pack each micro batch's records into rows instead of padding them (padding-free): positions
            restart at every record and attention never crosses a record boundary (transformers' packed-sequence
            masks; flash-attention's varlen path). A micro batch still holds ``batch.micro_batch_size`` records, so
            the global batch, accumulation and the step's loss-token mean are unchanged; no record is cut.
        packing_row_tokens: With ``packing``: tokens per packed row. ``null`` packs the whole micro batch into one
            row (no padding at all); a number packs first-fit-decreasing into rows of at most that many tokens
            (a record longer than that gets a row of its own), padded to the longest row.
        num_sample_prompts: Validation prompts whose generations are logged every validation epoch.
        batch: Global and micro batch size (accumulation is derived from the world size at launch).
        num_workers: DataLoader worker processes.
        seed: Seed of shuffling and length grouping.
        cache_dir: ``datasets`` cache directory.
    """

    def __init__(
        self,
        format: Literal["alpaca", "chat", "intent"],
        train_file: DataSource | None = None,
        val_file: DataSource | None = None,
        test_file: DataSource | None = None,
        predict_file: DataSource | None = None,
        mix_stopping: MixStopping = "all_exhausted",
        chat_template: str | None = None,
        text_field: str = "text",
        label_field: str = "label",
        labels: list[str] | None = None,
        intent_instruction: str = INTENT_INSTRUCTION,
        id_field: str | None = "id",
        cutoff_len: int = 256,
        overlong: Literal["truncate", "drop", "error"] = "truncate",
        group_by_length: bool = False,
        packing: bool = False,
        packing_row_tokens: int | None = None,
        num_sample_prompts: int = 4,
        batch: BatchSpec | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__(batch=batch, num_workers=num_workers, seed=seed)
        if format == "intent":
            if not labels:
                raise ValueError("format 'intent' needs data.labels: the allowed intents, in order")
            if len(set(labels)) != len(labels):
                raise ValueError(f"data.labels has duplicates: {labels}")
        if cutoff_len < 8:
            raise ValueError(f"data.cutoff_len must be >= 8, got {cutoff_len}")
        if chat_template is not None and format != "chat":
            raise ValueError(f"data.chat_template applies to format 'chat' (messages); format {format!r} renders "
                             "its records with its own prompt")
        self.chat_template = resolve_chat_template(chat_template)
        self.format, self.mix_stopping = format, mix_stopping
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file or test_file}
        self.text_field, self.label_field = text_field, label_field
        self.labels = list(labels) if labels else None
        self.intent_instruction = intent_instruction
        self.id_field = id_field
        self.cutoff_len = cutoff_len
        self.overlong = overlong
        self.group_by_length = group_by_length
        if packing_row_tokens is not None and packing_row_tokens < 1:
            raise ValueError(f"data.packing_row_tokens must be >= 1 (or null: one row), got {packing_row_tokens}")
        self.packing, self.packing_row_tokens = packing, packing_row_tokens
        self.num_sample_prompts = num_sample_prompts
        self.cache_dir = cache_dir
        self.truncation_report: dict[str, dict[str, int]] = {}

    # ----- what the model needs to know -----------------------------------------------------------------
    @property
    def label_names(self) -> list[str] | None:
        """Intent labels (generative classification), or ``None`` for free-form instruction data."""
        return self.labels

    def sample_batch(self) -> dict | None:
        """The first ``num_sample_prompts`` validation records, collated (for generations logged during training);
        ``None`` when there are none."""
        ds = self.splits.get("val")
        if ds is None or not self.num_sample_prompts or len(ds) == 0:
            return None
        return self.collate_fn([ds[i] for i in range(min(self.num_sample_prompts, len(ds)))])

    def loss_token_counts(self, split: str) -> list[int]:
        """Loss tokens of every sample of ``split`` (dataset order), for step-wide loss normalization."""
        return self.splits[split]["loss_tokens"]

    def prompt_spec(self) -> dict:
        """The prompt layout of this data (``prompt.json`` beside an exported adapter): ``template`` is a Python
        format string over ``fields``; ``tokenizer(prompt)`` gives the ids the model was trained on (BOS only
        where the tokenizer adds it itself), and the model's answer follows, closed by EOS."""
        spec: dict = {"format": self.format, "tokenize": "tokenizer(prompt)", "answer_ends_with": "eos_token"}
        if self.format == "intent":
            instruction = self.intent_instruction.format(labels=", ".join(self.labels))
            spec.update(template=INTENT_TEMPLATE.format(instruction=instruction.replace("{", "{{").replace("}", "}}"),
                                                        text="{text}"),
                        fields=["text"], labels=self.labels,
                        answer="one label of `labels`, as text (normalized: case, width, punctuation ignored)")
        elif self.format == "alpaca":
            spec.update(template=ALPACA_TEMPLATE, template_without_input=ALPACA_NO_INPUT_TEMPLATE,
                        fields=["instruction", "input"],
                        answer="the response; template_without_input when input is empty")
        else:
            spec.update(template=None, fields=["messages"], chat_template=self.chat_template, answer="the assistant turn",
                        tokenize="tokenizer.apply_chat_template(messages, chat_template=chat_template, "
                        "add_generation_prompt=True) (chat_template null: the tokenizer's own)",
                        answer_ends_with="the chat template's end of turn (and eos_token when it is not one)")
        return spec

    # ----- validation and rendering ---------------------------------------------------------------------
    def _validate(self, rf: RecordFile, need_targets: bool) -> None:
        if self.format == "alpaca":
            require_fields(rf, ["instruction"] + (["output"] if need_targets else []))
            check_text(rf, "instruction")
            if need_targets:
                check_text(rf, "output")
            if "input" in rf.dataset.column_names:
                for i, value in enumerate(rf.dataset["input"]):
                    if value is not None and not isinstance(value, str):
                        raise rf.error(i, "input", f"expected text, got {type(value).__name__} {value!r}")
        elif self.format == "intent":
            require_fields(rf, [self.text_field] + ([self.label_field] if need_targets else []))
            check_text(rf, self.text_field)
            if need_targets or self.label_field in rf.dataset.column_names:
                for i, value in enumerate(rf.dataset[self.label_field]):
                    if value not in self.labels:
                        raise rf.error(i, self.label_field, f"label {value!r} is not in the declared labels {self.labels}")
        else:
            require_fields(rf, ["messages"])
            for i, messages in enumerate(rf.dataset["messages"]):
                check_messages(rf, i, messages, need_answer=need_targets)

    def _prepare(self, split: str, need_targets: bool):
        rf = load_source(self.files[split], self.cache_dir, seed=self.seed, stopping=self.mix_stopping,
                         check=lambda part: self._validate(part, need_targets))
        tokenizer, cutoff, overlong = self.tokenizer, self.cutoff_len, self.overlong
        id_field = self.id_field if self.id_field in rf.dataset.column_names else None
        fmt, labels, instruction = self.format, self.labels, self.intent_instruction
        text_field, label_field = self.text_field, self.label_field
        template = (self.chat_template or getattr(tokenizer, "chat_template", None)) if fmt == "chat" else None
        bos = adds_bos(tokenizer) and not template  # a chat template writes its own BOS, as apply_chat_template

        def encode(record: dict, index: int) -> dict:
            segments, reference = render_record(record, fmt, tokenizer, labels, instruction, text_field, label_field,
                                                template)
            full = tokenize_segments(segments, tokenizer, add_bos=bos)
            # The prompt alone (everything before the last response), for generation and ranking.
            last = max(i for i, s in enumerate(segments) if s.train) if any(s.train for s in segments) else len(segments)
            prompt = tokenize_segments(segments[:last], tokenizer, add_eos=False, add_bos=bos).input_ids
            fitted = truncate(full, cutoff)
            status = "ok" if fitted is full else ("dropped" if fitted is None else
                     "response_truncated" if fitted.response_truncated else "prompt_truncated")
            fitted = fitted or full
            prompt = prompt[-(cutoff - 1):] if len(prompt) >= cutoff else prompt
            return {"id": str(record[id_field]) if id_field else str(index), "input_ids": fitted.input_ids,
                    "labels": fitted.labels, "loss_tokens": loss_token_count(fitted.labels), "prompt_ids": prompt,
                    "reference": reference, "status": status,
                    "length": len(fitted.input_ids), "format": fmt}

        ds = rf.dataset.map(encode, with_indices=True, remove_columns=rf.dataset.column_names,
                            desc=f"tokenize {split}")
        statuses = ds["status"]
        report = {k: statuses.count(k) for k in ("ok", "prompt_truncated", "response_truncated", "dropped")}
        over = [i for i, s in enumerate(statuses) if s != "ok"]
        if over and overlong == "error":
            i = over[0]
            raise RecordError(rf.locate(i), None, f"sample is longer than cutoff_len={cutoff} tokens "
                              f"({len(over)} such records in this file); raise data.cutoff_len or set "
                              "data.overlong to truncate or drop")
        if overlong == "drop":
            report["dropped"] += report.pop("prompt_truncated") + report.pop("response_truncated")
            report["prompt_truncated"] = report["response_truncated"] = 0
            keep = [i for i, s in enumerate(statuses) if s == "ok"]
        else:
            keep = [i for i, s in enumerate(statuses) if s != "dropped"]
        if not keep:  # empty work is an error, before any training starts
            why = "" if overlong == "drop" else "; none kept a response token"
            raise RecordError(rf.name, None, f"overlong: {overlong} removed {len(ds)} of {len(ds)} records "
                              f"(cutoff_len={cutoff}{why}), leaving no {split} data; raise data.cutoff_len")
        if len(keep) != len(ds):
            ds = ds.select(keep)
        self.truncation_report[split] = report
        if any(report[k] for k in ("prompt_truncated", "response_truncated", "dropped")):
            self.log_report(f"{describe(self.files[split])}: {report['prompt_truncated']} prompts truncated, "
                  f"{report['response_truncated']} responses truncated, {report['dropped']} samples dropped "
                  f"(cutoff_len={cutoff}, overlong={overlong})")
        return ds

    def setup(self, stage: str) -> None:
        stage = stage.value if isinstance(stage, Enum) else stage  # Lightning passes a TrainerFn (a str enum)
        self.collate_fn = CausalCollator(self.tokenizer.pad_token_id, self.packing, self.packing_row_tokens)
        if stage in ("fit", "validate"):
            for split in ("train", "val"):
                if split not in self.splits:
                    if not self.files[split]:
                        raise DataConfigError(f"data.{split}_file is required to {stage}")
                    self.splits[split] = self._prepare(split, need_targets=True)
        if stage == "test" and "test" not in self.splits:
            if not self.files["test"]:
                raise DataConfigError("data.test_file is required to test")
            self.splits["test"] = self._prepare("test", need_targets=True)
        if stage == "predict" and "predict" not in self.splits:
            if not self.files["predict"]:
                raise DataConfigError("data.predict_file (or data.test_file) is required to predict")
            self.splits["predict"] = self._prepare("predict", need_targets=False)

    def train_dataloader(self):
        if not self.group_by_length:
            return super().train_dataloader()
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = self._start_train_sampler(LengthGroupedSampler(
            self.splits["train"]["length"], self.batch.effective_global_batch_size(world), self.batch.micro_batch_size,
            num_replicas=world, rank=rank, seed=self.seed))
        return torch.utils.data.DataLoader(self.splits["train"], batch_size=self.batch.micro_batch_size,
                                           sampler=sampler, collate_fn=self.collate_fn,
                                           num_workers=self.num_workers, persistent_workers=self.num_workers > 0)


def render_record(record: dict, fmt: str, tokenizer, labels: list[str] | None = None,
                  intent_instruction: str = INTENT_INSTRUCTION, text_field: str = "text",
                  label_field: str = "label", chat_template: str | None = None) -> tuple[list[Segment], str]:
    """Segments of one record and its reference answer text (empty when the record has no answer); a chat is
    rendered with ``chat_template`` (default: the tokenizer's)."""
    if fmt == "alpaca":
        answer = record.get("output") or ""
        return [Segment(alpaca_prompt(record["instruction"], record.get("input") or ""), False),
                Segment(answer, True)], answer
    if fmt == "intent":
        answer = record.get(label_field) or ""
        return [Segment(intent_prompt(record[text_field], labels, intent_instruction), False),
                Segment(answer, True)], answer
    messages = record["messages"]
    answer = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
    return chat_segments(messages, tokenizer, chat_template), answer


class CausalCollator:
    """Right-padded ``input_ids``/``labels``/``attention_mask`` (batch, seq) for the loss, left-padded
    ``prompt_ids``/``prompt_mask`` (batch, prompt_seq) for generation and label ranking, and ``loss_tokens``
    (int): the batch's tokens that enter the loss. With ``packing``, the records are packed into rows instead
    (``datamodules.collate.pack_causal``: ``input_ids``/``labels``/``attention_mask``/``position_ids`` are
    (rows, seq)); ``prompt_ids``, ``id`` and ``reference`` stay one per record."""

    def __init__(self, pad_token_id: int, packing: bool = False, row_tokens: int | None = None):
        self.pad, self.packing, self.row_tokens = pad_token_id, packing, row_tokens

    def __call__(self, features: list[dict]) -> dict:
        causal = pack_causal(features, self.pad, self.row_tokens) if self.packing else pad_causal(features, self.pad)
        return {**causal, "id": [f["id"] for f in features], "reference": [f["reference"] for f in features]}


class LengthGroupedSampler(ResumableSampler):
    """Length-grouped order whose optimizer steps hold the same samples at any world size and micro batch.

    Seeded shuffle (seed + epoch), then within mega-batches of ``mega`` global batches sort by length and cut
    into global batches; the full global batches are shuffled and the partial one (if any) comes last. A global
    batch (one optimizer step, sorted by length) is cut into micro batches of similar length, dealt to the
    processes in turn: process ``r`` gets micro batches ``r, r + world, ...`` of every step. So the samples of
    step k do not depend on ``micro_batch_size`` or ``num_replicas`` (the loss is normalized over the step's
    tokens, so neither does the step), and padding drops. As with ``DistributedSampler``, the epoch's last,
    partial step is padded on N processes with repeats of its own samples so every process gets as many.

    A ``DistributedSampler`` itself, so Lightning uses it as it is (it would otherwise wrap it and shuffle the
    grouped order away). ``set_epoch`` reshuffles per epoch; ``start_at`` resumes part-way (``ResumableSampler``).
    """

    def __init__(self, lengths: list[int], global_batch_size: int, micro_batch_size: int, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0, mega: int = 50):
        if global_batch_size % (micro_batch_size * num_replicas):
            raise ValueError(f"global batch {global_batch_size} is not a multiple of micro batch {micro_batch_size} "
                             f"x {num_replicas} processes")
        super().__init__(range(len(lengths)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.lengths = np.asarray(lengths)
        self.global_batch, self.micro, self.mega = global_batch_size, micro_batch_size, mega

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.global_batch)
        return full * (self.global_batch // self.num_replicas) + math.ceil(rest / self.num_replicas)

    def steps(self) -> list[np.ndarray]:
        """The epoch's global batches (sample indices, longest first), in step order; the same on every process."""
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(len(self.lengths))
        size = self.global_batch * self.mega
        full, partial = [], []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            for i in range(0, len(chunk), self.global_batch):
                (full if len(chunk[i:i + self.global_batch]) == self.global_batch else partial).append(
                    chunk[i:i + self.global_batch])
        rest = np.concatenate(partial) if partial else None
        steps = [full[i] for i in rng.permutation(len(full))]
        if rest is not None:  # at most one short step, last (several chunks' remainders together)
            rest = rest[np.argsort(-self.lengths[rest], kind="stable")]
            steps += [rest[i:i + self.global_batch] for i in range(0, len(rest), self.global_batch)]
        return steps

    def epoch_indices(self):
        world, rank, micro = self.num_replicas, self.rank, self.micro
        for step in self.steps():
            if len(step) == self.global_batch:
                micro_batches = [step[i:i + micro] for i in range(0, len(step), micro)]
                for batch in micro_batches[rank::world]:
                    yield from batch.tolist()
            else:
                padded = np.resize(step, math.ceil(len(step) / world) * world)  # repeats its own samples
                yield from padded[rank::world].tolist()


def padding_fraction(lengths: list[int], micro_batch_size: int, order: list[int] | None = None) -> float:
    """Share of pad tokens when ``lengths`` are batched in ``order`` (default: as given)."""
    order = list(range(len(lengths))) if order is None else order
    pad = total = 0
    for i in range(0, len(order), micro_batch_size):
        batch = [lengths[j] for j in order[i:i + micro_batch_size]]
        total += max(batch) * len(batch)
        pad += max(batch) * len(batch) - sum(batch)
    return pad / total if total else math.nan
