"""Image + text instruction data for vision-language models (MISSION §3).

Records (JSONL, CSV or Parquet; one per line):
  ``image``      path of the image, relative to the data file's directory (or absolute);
  ``messages``   ``[{"role": "user"|"assistant"|"system", "content": text}, ...]`` (the image is placed at the
                 start of the first user turn), or ``question`` + ``answer``;
  optional       ``id``, ``scenario``, ``type`` (QA type ``A``-``D``), ``alert`` (true/false: the correct alert
                 decision, used for evaluation), ``review`` (``pending``/``accepted``/``edited``/``rejected``).

Every record is checked before training: a missing or unreadable image, an unsupported image mode, an image the
model's processor cannot use (too small, or too long and thin), an empty answer, an unknown type or review value
is a :class:`~datamodules.records.RecordError` naming file, line and field. Images are opened lazily (headers
when samples are tokenized, pixels when a batch is built).

The loss is on assistant answers only: system text, user text, chat markup and image tokens are masked.
A sample longer than ``cutoff_len`` is never cut (a cut inside the image tokens would break the model's
image-feature/token correspondence): it stops the run (``overlong: error``, the default, naming the record)
or is skipped and counted (``overlong: skip``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from datamodules.base import TuneloopDataModule
from datamodules.records import DataConfigError, RecordError, RecordFile
from datamodules.sources import DataSource, MixStopping, load_source, per_record
from datamodules.templates import Segment, chat_segments, check_messages, loss_token_count, tokenize_segments
from datamodules.batch import BatchSpec
from datamodules.collate import pad_causal

QA_TYPES = ("A", "B", "C", "D")
REVIEW_VALUES = ("pending", "accepted", "edited", "rejected")
TRAINABLE_REVIEW = (None, "accepted", "edited")  # records without a review column count as accepted
# PIL modes that convert to RGB without losing meaning; 16-bit/float/1-bit images need an explicit export.
SUPPORTED_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr", "RGBX")


def open_image(path: str | Path):
    """The image at ``path`` as RGB (alpha composited on white)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, img).convert("RGB")
        return img.convert("RGB")


def check_image(path: Path) -> tuple[int, int]:
    """(width, height) of a readable image in a supported mode; raises ``ValueError`` saying what is wrong."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
            img.verify()  # structure and checksums, without decoding every pixel
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"unreadable image {path}: {e}") from None
    if mode not in SUPPORTED_MODES:
        raise ValueError(f"unsupported image mode {mode!r} in {path}; convert it to RGB (supported: "
                         f"{', '.join(SUPPORTED_MODES)})")
    if min(size) < 1:
        raise ValueError(f"empty image {path} ({size[0]}x{size[1]})")
    return size


def image_path(rf, index: int, image: str) -> Path:
    """Where record ``index``'s image is: a relative path resolves against its source's folder (a data file's, a
    local dataset's); a dataset from the Hub has none, so its images need absolute paths."""
    base = rf.source_dir(index)
    if base is None and not Path(image).is_absolute():
        raise rf.error(index, "image", f"relative image path {image!r} in a dataset without a local folder: give "
                       "absolute paths, or load the dataset from a local folder")
    return Path(image) if base is None else base / image


def record_messages(record: dict) -> list[dict]:
    """The record's conversation with the image placed at the start of the first user turn."""
    if record.get("messages"):
        messages = [dict(m) for m in record["messages"]]
    else:
        messages = [{"role": "user", "content": record["question"]}]
        if record.get("answer"):
            messages.append({"role": "assistant", "content": record["answer"]})
    for m in messages:
        if m["role"] == "user":
            m["content"] = [{"type": "image"}, {"type": "text", "text": m["content"]}]
            break
    return messages


class VisionInstructionDataModule(TuneloopDataModule):
    """Image + instruction records for vision-language SFT (see the module docstring for the format).

    Args:
        train_file: Training records (.jsonl, .csv or .parquet), a dataset ``hf://owner/name?split=train`` (a local
            dataset folder, or images given as absolute paths), or a mix ``[{source: ..., weight: ...}, ...]``
            (``datamodules.sources``); the other files take the same.
        val_file: Validation records.
        test_file: Test records (``tuneloop test``); an ``alert`` field enables alert metrics.
        predict_file: Records to answer (default: the test file).
        system_prompt: System turn put before every conversation that has none (``null``: the model's chat
            template decides, Qwen2.5-VL: "You are a helpful assistant.").
        cutoff_len: Maximum tokens per sample, image tokens included.
        overlong: A sample longer than ``cutoff_len``: ``error`` (stop, naming the record) or ``skip``
            (leave it out and count it). Samples are never truncated.
        min_pixels: Lower bound of the resized image area (``null``: the model's default).
        max_pixels: Upper bound of the resized image area; fewer pixels = fewer image tokens.
        reviewed_only: Train only on records whose ``review`` is ``accepted`` or ``edited`` (or absent);
            ``pending`` and ``rejected`` drafts are left out and counted.
        id_field: Field that identifies a record in predictions (row number when absent).
        mix_stopping: A mix ends when every source has been drawn in full (``all_exhausted``) or when the first
            runs out (``first_exhausted``).
        num_sample_generations: Validation records whose answers are generated and logged every validation
            epoch (with their images).
        batch: Global and micro batch size (accumulation is derived from the world size at launch).
        num_workers: DataLoader worker processes (images are decoded in the workers).
        seed: Seed of shuffling.
        cache_dir: ``datasets`` cache directory.
    """

    def __init__(
        self,
        train_file: DataSource | None = None,
        val_file: DataSource | None = None,
        test_file: DataSource | None = None,
        predict_file: DataSource | None = None,
        system_prompt: str | None = None,
        cutoff_len: int = 2048,
        overlong: Literal["error", "skip"] = "error",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        reviewed_only: bool = True,
        id_field: str | None = "id",
        mix_stopping: MixStopping = "all_exhausted",
        num_sample_generations: int = 4,
        batch: BatchSpec | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__(batch=batch, num_workers=num_workers, seed=seed)
        if cutoff_len < 8:
            raise ValueError(f"data.cutoff_len must be >= 8, got {cutoff_len}")
        if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
            raise ValueError(f"data.min_pixels ({min_pixels}) is larger than data.max_pixels ({max_pixels})")
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file or test_file}
        self.system_prompt = system_prompt
        self.cutoff_len, self.overlong = cutoff_len, overlong
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.reviewed_only = reviewed_only
        self.id_field, self.mix_stopping = id_field, mix_stopping
        self.num_sample_generations = num_sample_generations
        self.cache_dir = cache_dir
        self.report: dict[str, dict[str, int]] = {}
        self._processor = None

    # ----- the model's processor ------------------------------------------------------------------------
    def use_preprocessing(self, tokenizer, processor=None) -> None:
        """Take the model's processor (tokenizer + image processor); the CLI passes the module's."""
        if processor is None:
            raise TypeError("VisionInstructionDataModule needs the model's processor (tokenizer + image processor): "
                            "use it with an image-text module such as modules.vision_language.VisionLanguageModule")
        self.processor = processor

    @property
    def processor(self):
        """The model's :class:`~modules.processor.VisionProcessor` (see ``use_preprocessing``)."""
        if self._processor is None:
            raise RuntimeError("VisionInstructionDataModule has no processor: call "
                               "datamodule.use_preprocessing(module.tokenizer, module.processor) before fitting "
                               "(the tuneloop CLI does this)")
        return self._processor

    @processor.setter
    def processor(self, value) -> None:
        self._processor = value
        self.tokenizer = value.tokenizer

    # ----- validation -------------------------------------------------------------------------------------
    def _validate(self, rf: RecordFile, need_answers: bool) -> list[tuple[int, int]]:
        """Check every record (see the module docstring); returns each record's image (width, height)."""
        ds, columns = rf.dataset, set(rf.dataset.column_names)
        if "image" not in columns:
            raise rf.error(0, "image", f"missing (the file has fields {sorted(columns)})")
        if "messages" not in columns and "question" not in columns:
            raise rf.error(0, "messages", "missing: give `messages` (user/assistant turns) or `question` and `answer`")
        if need_answers and "messages" not in columns and "answer" not in columns:
            raise rf.error(0, "answer", "missing: training and evaluation records need an answer")
        sizes = []
        for i, record in enumerate(ds):
            image = record.get("image")
            if not isinstance(image, str) or not image.strip():
                raise rf.error(i, "image", f"expected an image path, got {image!r}")
            try:
                sizes.append(check_image(image_path(rf, i, image)))
            except ValueError as e:
                raise rf.error(i, "image", str(e)) from None
            problem = self.processor.size_problem(*sizes[-1], self.min_pixels, self.max_pixels)
            if problem:
                raise rf.error(i, "image", f"{image} is {problem}")
            if record.get("messages"):
                check_messages(rf, i, record["messages"], need_user="to attach the image to")
                if need_answers and record["messages"][-1]["role"] != "assistant":
                    raise rf.error(i, "messages", "the last turn must be the assistant's answer")
            else:
                question = record.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise rf.error(i, "question", f"expected a non-empty question, got {question!r}")
                answer = record.get("answer")
                if need_answers and (not isinstance(answer, str) or not answer.strip()):
                    raise rf.error(i, "answer", "empty answer" if isinstance(answer, str) else f"expected text, got {answer!r}")
            qa_type = record.get("type")
            if qa_type is not None and qa_type not in QA_TYPES:
                raise rf.error(i, "type", f"unknown QA type {qa_type!r}; expected one of {', '.join(QA_TYPES)}")
            alert = record.get("alert")
            if alert is not None and not isinstance(alert, bool):
                raise rf.error(i, "alert", f"expected true or false, got {alert!r}")
            review = record.get("review")
            if review is not None and review not in REVIEW_VALUES:
                raise rf.error(i, "review", f"unknown review state {review!r}; expected one of {', '.join(REVIEW_VALUES)}")
        return sizes

    # ----- tokenization -----------------------------------------------------------------------------------
    def _prepare(self, split: str, need_answers: bool) -> "VisionDataset":
        checked: dict[int, list] = {}  # each source's image sizes, checked before any mixing
        rf = load_source(self.files[split], self.cache_dir, seed=self.seed, stopping=self.mix_stopping,
                         check=lambda part: checked.__setitem__(id(part), self._validate(part, need_answers)))
        sizes = per_record(rf, checked)
        proc, system = self.processor, self.system_prompt
        cutoff, bounds = self.cutoff_len, (self.min_pixels, self.max_pixels)
        id_field = self.id_field if self.id_field in rf.dataset.column_names else None

        def encode(record: dict, index: int) -> dict:
            n_image = proc.num_image_tokens(*sizes[index], *bounds)
            sample = encode_sample(record, proc, n_image, system)
            return {"id": str(record[id_field]) if id_field else str(index), "where": rf.locate(index),
                    "image_path": str(image_path(rf, index, record["image"])), **sample, "alert": record.get("alert"),
                    "type": record.get("type"), "review": record.get("review"), "num_image_tokens": n_image}

        ds = rf.dataset.map(encode, with_indices=True, remove_columns=rf.dataset.column_names,
                            desc=f"tokenize {split}")
        lengths = [len(x) for x in ds["input_ids"]]
        over = [i for i, n in enumerate(lengths) if n > cutoff]
        if over and self.overlong == "error":
            i = over[0]
            raise RecordError(ds[i]["where"], None, f"sample is {lengths[i]} tokens ({ds[i]['num_image_tokens']} of "
                              f"them image tokens), longer than cutoff_len={cutoff}; {len(over)} such records in "
                              "this file. Samples are never truncated (image tokens must stay whole): raise "
                              "data.cutoff_len, lower data.max_pixels, or set data.overlong=skip")
        unreviewed = []
        if self.reviewed_only and split == "train":
            unreviewed = [i for i, r in enumerate(ds["review"]) if r not in TRAINABLE_REVIEW]
        drop = set(over) | set(unreviewed)
        report = {"records": len(ds), "overlong_skipped": len(over), "unreviewed_skipped": len(set(unreviewed) - set(over))}
        if drop:
            ds = ds.select([i for i in range(len(ds)) if i not in drop])
            self.log_report(f"{rf.name}: {report['overlong_skipped']} samples longer than cutoff_len={cutoff} skipped, "
                  f"{report['unreviewed_skipped']} unreviewed (pending/rejected) records left out")
        if len(ds) == 0:
            raise RecordError(rf.name, None, "no usable records left (all over-long or unreviewed)")
        report["used"] = len(ds)
        self.report[split] = report
        return VisionDataset(ds)

    def setup(self, stage: str) -> None:
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn
        self.tokenizer = self.processor.tokenizer
        self.collate_fn = VisionCollator(self.processor, self.min_pixels, self.max_pixels)
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}[stage]
        for split in needed:
            if split in self.splits:
                continue
            if not self.files[split]:
                name = "predict_file (or data.test_file)" if split == "predict" else f"{split}_file"
                raise DataConfigError(f"data.{name} is required to {stage}")
            self.splits[split] = self._prepare(split, need_answers=split != "predict")

    def prompt_spec(self) -> dict:
        """Prompt layout (``prompt.json`` beside an exported adapter): the processor's chat template over the
        record's messages, one image placeholder in the user turn, the system turn below when it has none."""
        return {"format": "chat", "template": None, "fields": ["image", "messages"], "system_prompt": self.system_prompt,
                "tokenize": "processor.apply_chat_template(messages, add_generation_prompt=True), then "
                            "processor(text=..., images=[image])",
                "answer": "the assistant turn", "answer_ends_with": "the chat template's end of turn"}

    def loss_token_counts(self, split: str) -> list[int]:
        """Loss tokens of every sample of ``split`` (dataset order), for step-wide loss normalization."""
        return self.splits[split].column("loss_tokens")

    def sample_batch(self) -> dict | None:
        """The first ``num_sample_generations`` validation records, collated (for logged generations)."""
        ds = self.splits.get("val")
        if ds is None or not self.num_sample_generations:
            return None
        return self.collate_fn([ds[i] for i in range(min(self.num_sample_generations, len(ds)))])


def encode_sample(record: dict, proc, num_image_tokens: int, system_prompt: str | None = None) -> dict:
    """Token ids of one record with answer-only labels, and its generation prompt.

    Returns ``input_ids``, ``labels`` (-100 except on assistant answers and their end-of-turn markup),
    ``prompt_ids`` (everything up to the last answer) and ``reference`` (the last answer, or ``""``).
    """
    messages = record_messages(record)
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    tok = proc.tokenizer
    if messages[-1]["role"] == "assistant":
        segments = chat_segments(messages, tok)
        reference = messages[-1]["content"]
    else:
        segments = [Segment(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False)]
        reference = ""
    # The image placeholder (in a prompt segment) stands for the image's patch tokens.
    segments = [seg if seg.train else Segment(seg.text.replace(proc.image_token, proc.image_token * num_image_tokens),
                                              False) for seg in segments]
    sample = tokenize_segments(segments, tok, add_eos=False, add_bos=False)
    ids, labels = sample.input_ids, sample.labels
    prompt_len = sample.response_start if any(s.train for s in segments) else len(ids)
    return {"input_ids": ids, "labels": labels, "loss_tokens": loss_token_count(labels), "prompt_ids": ids[:prompt_len],
            "reference": reference}


class VisionDataset(Dataset):
    """Tokenized records (an Arrow ``datasets.Dataset``) whose images are opened when an item is read."""

    def __init__(self, records):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.records[index])
        item["image"] = open_image(item["image_path"])
        return item

    def column(self, name: str) -> list:
        return self.records[name]


@dataclass
class VisionCollator:
    """A batch: right-padded ``input_ids``/``labels``/``attention_mask``, left-padded ``prompt_ids``/
    ``prompt_mask`` (generation), the images' ``pixel_values``/``image_grid_thw`` from the model's image
    processor, ``mm_token_type_ids``/``prompt_mm_token_type_ids`` (1 on image tokens), and per record ``id``, ``reference``, ``alert``, ``type`` and the PIL ``images``.

    The image tokens of every sample are checked against the features the image processor produced for it;
    a mismatch names the record (it means the image changed after tokenization, e.g. a stale cache).
    """

    processor: object
    min_pixels: int | None = None
    max_pixels: int | None = None

    def __call__(self, features: list[dict]) -> dict:
        proc = self.processor
        pad = proc.tokenizer.pad_token_id
        vision = proc.preprocess([f["image"] for f in features], self.min_pixels, self.max_pixels)
        for f, expected in zip(features, proc.tokens_per_image(vision["image_grid_thw"])):
            found = sum(1 for t in f["input_ids"] if t == proc.image_token_id)
            if found != expected:
                raise RecordError(f["where"], "image", f"the image now gives {expected} image tokens but the sample "
                                  f"was tokenized with {found}; the image file changed after tokenization (clear "
                                  "the datasets cache)")
        causal = pad_causal(features, pad)
        input_ids, prompt_ids = causal["input_ids"], causal["prompt_ids"]
        # Modality of each token (0 text, 1 image): multimodal RoPE gives image tokens 3D positions.
        return {**causal, **vision,
                "mm_token_type_ids": (input_ids == proc.image_token_id).int(),
                "prompt_mm_token_type_ids": (prompt_ids == proc.image_token_id).int(), "id": [f["id"] for f in features],
                "reference": [f["reference"] for f in features], "alert": [f["alert"] for f in features],
                "type": [f["type"] for f in features], "images": [f["image"] for f in features]}
