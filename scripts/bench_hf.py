"""The HF Trainer side of ``scripts/bench.py``: the same job as a ``tuneloop fit``, run with ``transformers.Trainer``
(+ PEFT), one process per run. Not meant to be run by hand: ``bench.py`` writes the job as JSON and starts
``python scripts/bench_hf.py JOB.json``.

Same as the tuneloop side, on purpose: the records are loaded and tokenized here as an HF script does it
(``datasets.load_dataset`` + a cached ``map``), rendered with tuneloop's own prompt template and truncation rule
(``datamodules/templates.py``: plain functions, no Lightning), so the token ids and loss masks are tuneloop's; they
are drawn in the order of tuneloop's seeded sampler (the length-grouped one for the SFT recipe, listed by the
bench), so both sides train the same micro batches in the same order (the bench checks it); the optimizer,
schedule, clipping, LoRA settings, seed and precision come from the resolved recipe. This process imports no
Lightning, so its start-up is the HF stack's own. HF's own pieces do the rest: ``DataCollatorForSeq2Seq``
(padding) or ``DataCollatorWithFlattening`` (padding-free) for SFT, ``DataCollatorWithPadding`` for the encoder,
``TrainingArguments`` for the optimizer and schedule, its loss (``num_items_in_batch``: a token mean over the
optimizer step, as tuneloop's). Timings per optimizer step are written to the job's ``out`` as JSON, in the
format of ``bench_timing.StepTimes``.
"""

from __future__ import annotations

import time

T_START = [time.time(), time.process_time()]  # marks: [wall clock, CPU seconds of this process]

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    marks = {"script": T_START}
    import torch
    import transformers

    sys.path.insert(0, str(ROOT))  # datamodules.templates: tuneloop's prompt template, plain functions
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_steps import lora_settings, optimizer_settings, write_json

    marks["imported"] = [time.time(), time.process_time()]
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    transformers.set_seed(job["seed"])
    build = build_sft if job["job"] == "sft" else build_encoder
    model, train, sampler, collator, loss_func = build(job, marks)
    marks["built"] = [time.time(), time.process_time()]
    batch, opt, sched = job["batch"], job["optimizer"], job["scheduler"]
    accumulate = batch["global_batch_size"] // batch["micro_batch_size"]
    out_dir = tempfile.mkdtemp(prefix="bench-hf-")
    args = transformers.TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=batch["micro_batch_size"],
        gradient_accumulation_steps=accumulate, max_steps=job["steps"], learning_rate=opt["lr"],
        adam_beta1=opt["betas"][0], adam_beta2=opt["betas"][1], adam_epsilon=opt["eps"], weight_decay=opt["weight_decay"],
        optim="adamw_torch_fused" if opt.get("fused") else "adamw_torch", lr_scheduler_type=sched["name"],
        warmup_steps=sched["warmup_steps"], max_grad_norm=job["gradient_clip_val"] or 0.0, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", seed=job["seed"], dataloader_num_workers=0,
        remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=job.get("gradient_checkpointing", False),
        gradient_checkpointing_kwargs={"use_reentrant": False} if job.get("gradient_checkpointing") else None,
        disable_tqdm=False,
    )
    timer = make_timer(marks)
    trainer = bench_trainer_class()(model=model, args=args, train_dataset=train, data_collator=collator,
                                    callbacks=[timer], compute_loss_func=loss_func)
    trainer.bench_sampler, trainer.bench_timer = sampler, timer
    trainer.train()
    marks["train_end"] = [time.time(), time.process_time()]
    settings = {"optimizer": optimizer_settings(trainer.optimizer), "lora": lora_settings(model),
                "accumulate_grad_batches": accumulate, "micro_batch_size": batch["micro_batch_size"],
                "gradient_clip_val": args.max_grad_norm, "precision": "fp32", "max_steps": args.max_steps,
                "trainable_checksum": timer.checksum,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "threads": torch.get_num_threads(), "collator": type(collator).__name__,
                "transformers": transformers.__version__}
    write_json(Path(job["out"]), {"side": "hf", "marks": marks, "settings": settings, "steps": timer.steps})
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)


def load_tokenizer(job: dict):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize(job: dict, tokenizer=None):
    """The job's training records, tokenized (also called by the bench before timing, to fill the map cache)."""
    tokenizer = tokenizer or load_tokenizer(job)
    return (tokenize_sft if job["job"] == "sft" else tokenize_encoder)(job, tokenizer)


def load_records(path: str):
    import datasets

    return datasets.load_dataset("json", data_files=str(ROOT / path), split="train")


def tokenize_sft(job: dict, tokenizer):
    """The Alpaca records as token ids and labels (-100 on the prompt), as tuneloop renders and truncates them."""
    from datamodules.templates import Segment, adds_bos, alpaca_prompt, tokenize_segments, truncate

    data = job["data"]
    if data.get("format", "alpaca") != "alpaca":
        raise SystemExit(f"bench_hf: the SFT bench covers the alpaca format, not {data['format']!r}")
    cutoff, bos = data.get("cutoff_len", 256), adds_bos(tokenizer)

    def encode(record):
        full = tokenize_segments([Segment(alpaca_prompt(record["instruction"], record.get("input") or ""), False),
                                  Segment(record["output"], True)], tokenizer, add_bos=bos)
        fitted = truncate(full, cutoff) or full  # the bench data has no record without a response token left
        return {"input_ids": fitted.input_ids, "labels": fitted.labels}

    ds = load_records(data["train_file"])
    return ds.map(encode, remove_columns=ds.column_names, desc="tokenize")


def tokenize_encoder(job: dict, tokenizer):
    """Multi-label records as token ids and 0/1 label rows, as tuneloop's encoder data encodes them."""
    data = job["data"]
    (text,), (field,), labels = data["text_fields"], data["label_fields"], data["labels"]

    def encode(batch):
        enc = tokenizer(batch[text], truncation=True, max_length=data.get("max_length", 256))
        enc["labels"] = [[float(name in names) for name in labels] for names in batch[field]]
        return enc

    ds = load_records(data["train_file"])
    return ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenize")


def build_sft(job: dict, marks: dict):
    """LoRA causal LM on the tokenized Alpaca records, in the sampler's order, with an HF collator."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, DataCollatorWithFlattening

    tokenizer = load_tokenizer(job)
    train, sampler = tokenize_sft(job, tokenizer), ListSampler(job["order"])
    marks["data"] = [time.time(), time.process_time()]
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)  # the bench runs fp32
    lora = job["lora"]
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"],
                                             lora_dropout=lora["dropout"], target_modules=lora["target_modules"]))
    if job["collator"] == "flatten":
        collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    return model, train, sampler, collator, None


def build_encoder(job: dict, marks: dict):
    """Multi-label classification with ``AutoModelForSequenceClassification`` on the tokenized records, in the
    sampler's order, ``DataCollatorWithPadding``, and the recipe's loss (BCEWithLogits with its ``pos_weight``,
    through ``compute_loss_func``)."""
    import torch
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    tokenizer = load_tokenizer(job)
    train, sampler = tokenize_encoder(job, tokenizer), ListSampler(job["order"])
    marks["data"] = [time.time(), time.process_time()]
    model = AutoModelForSequenceClassification.from_pretrained(job["model"], num_labels=job["num_labels"],
                                                               problem_type="multi_label_classification")
    pos_weight = torch.tensor(job["pos_weight"], dtype=torch.float32) if job.get("pos_weight") else None

    def loss_func(outputs, labels, num_items_in_batch=None):
        # Sum over the micro batch's (record, label) pairs / the optimizer step's pairs: the mean over the step,
        # as HF expects from a compute_loss_func (it does not divide by the accumulation steps itself).
        weight = pos_weight.to(outputs.logits.device) if pos_weight is not None else None
        loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits, labels.float(), pos_weight=weight,
                                                                    reduction="sum")
        return loss / num_items_in_batch

    return model, train, sampler, DataCollatorWithPadding(tokenizer), loss_func


class ListSampler:
    """Yields the given dataset indices in order: the order tuneloop's sampler draws (listed by the bench)."""

    def __init__(self, order: list[int]):
        self.order = list(order)

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def bench_trainer_class():
    """``transformers.Trainer`` drawing the job's sampler and counting each micro batch's tokens."""
    import torch
    from transformers import Trainer

    from bench_steps import micro_record

    class BenchTrainer(Trainer):
        bench_sampler = None
        bench_timer = None

        def _get_train_sampler(self, train_dataset=None):
            return self.bench_sampler

        def training_step(self, model, inputs, num_items_in_batch=None):
            labels = inputs.get("labels")
            loss_tokens = (labels[..., 1:] != -100).sum() if labels is not None and labels.dtype == torch.long else None
            self.bench_timer.micro.append(micro_record(inputs["input_ids"], inputs.get("attention_mask"),
                                                       inputs.get("position_ids"), loss_tokens))
            return super().training_step(model, inputs, num_items_in_batch)

    return BenchTrainer


def make_timer(marks: dict):
    """A ``TrainerCallback`` recording, per optimizer step, its finish time, tokens (counted in ``training_step``),
    loss and learning rate (the format of ``bench_timing.StepTimes``)."""
    import torch
    from transformers import TrainerCallback

    from bench_steps import cuda_memory, step_record, trainable_checksum

    class HFStepTimes(TrainerCallback):
        def __init__(self):
            self.marks = marks
            self.steps: list[dict] = []
            self.micro: list[dict] = []
            self.checksum = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.marks["train_start"] = [time.time(), time.process_time()]
            self.checksum = trainable_checksum(model)

        def on_step_begin(self, args, state, control, **kwargs):
            self.marks.setdefault("first_batch", [time.time(), time.process_time()])

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            now = time.time()
            micro, self.micro = self.micro, []
            device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
            self.steps.append({**step_record(state.global_step, now, micro, None, optimizer.param_groups[0]["lr"]),
                               **cuda_memory(device)})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                for step in self.steps:
                    if step["step"] == state.global_step:
                        step["loss"] = float(logs["loss"])

    return HFStepTimes()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
