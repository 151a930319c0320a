"""Image + text preprocessing of vision-language models: the model's own tokenizer and image processor, and
the rule that says how many placeholder tokens one image becomes.

``transformers``' composite processors (``AutoProcessor``) need torchvision for their video half; this class
composes the two parts we need directly, so the same code runs with the PIL image processors (no
torchvision, e.g. ``Qwen2VLImageProcessorPil``) and with the fast torchvision ones when they are installed.

Image placeholders: the chat template writes one image token per image (Qwen2-VL family:
``<|vision_start|><|image_pad|><|vision_end|>``); before tokenization it is expanded to as many tokens as
the vision tower will produce features for that image (``image_grid_thw.prod() // merge_size**2``). The
count is computed from the image size alone (no decoding) when samples are tokenized, and checked against
the image processor's real output when a batch is built, so features and tokens always match.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.backbone import BackboneSpec, load_tokenizer, resolve_path

SPECIAL_TOKENS_FILE = "special_tokens.json"  # in a VLM's configs/models/<name>/ directory
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# transformers' ``smart_resize`` (Qwen2-VL family) refuses an image whose long side is over 200 times its short side.
MAX_ASPECT_RATIO = 200


def image_backend() -> str:
    """``torchvision`` (fast image processors) when installed, else ``pil``."""
    return "torchvision" if importlib.util.find_spec("torchvision") is not None else "pil"


@dataclass
class VisionProcessor:
    """Tokenizer + image processor of one vision-language model.

    Attributes:
        tokenizer: The model's tokenizer (with its chat template).
        image_processor: The model's image processor (PIL or torchvision backend).
        image_token: The placeholder the chat template writes for an image (expanded per image).
    """

    tokenizer: Any
    image_processor: Any
    image_token: str = "<|image_pad|>"

    def __post_init__(self) -> None:
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {self.image_token!r} token; it is not the tokenizer of this "
                             "vision-language model")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; a vision-language model needs one to place images")
        self.merge_size = int(getattr(self.image_processor, "merge_size", 1) or 1)

    # ----- sizes --------------------------------------------------------------------------------------------
    def size_kwargs(self, min_pixels: int | None, max_pixels: int | None) -> dict:
        """Image-processor kwargs bounding the resized image area (``None`` keeps the model's default)."""
        size = dict(self.image_processor.size)
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        return {"size": size}

    def num_image_tokens(self, width: int, height: int, min_pixels: int | None = None,
                         max_pixels: int | None = None) -> int:
        """Placeholder tokens of one ``width`` x ``height`` image after resizing within the pixel bounds."""
        size = self.size_kwargs(min_pixels, max_pixels)["size"]
        patches = self.image_processor.get_number_of_image_patches(
            height, width, {"min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]})
        return int(patches) // self.merge_size**2

    def size_problem(self, width: int, height: int, min_pixels: int | None = None,
                     max_pixels: int | None = None) -> str | None:
        """Why the image processor cannot use a ``width`` x ``height`` image (``None`` when it can): an aspect ratio
        over :data:`MAX_ASPECT_RATIO`, or a side shorter than one merged patch (``patch_size x merge_size`` pixels,
        28 for Qwen2-VL: less than one image token's worth of pixels, which the processor would blow up to its
        minimum size without a word)."""
        patch = int(getattr(self.image_processor, "patch_size", 1) or 1)
        side = patch * self.merge_size
        ratio = max(width, height) / max(min(width, height), 1)
        size = f"{width}x{height} pixels"
        if ratio > MAX_ASPECT_RATIO:
            return (f"{size}: aspect ratio {ratio:.0f}:1 is over the image processor's limit of {MAX_ASPECT_RATIO}:1; "
                    "crop or pad the image")
        if min(width, height) < side:
            return (f"{size}: smaller than the image processor's minimum of {side} pixels per side (patch_size "
                    f"{patch} x merge_size {self.merge_size}); use a larger image")
        try:
            self.num_image_tokens(width, height, min_pixels, max_pixels)
        except ValueError as e:  # another limit of this image processor
            return f"{size}: the image processor refuses it ({e})"
        return None

    def preprocess(self, images: list, min_pixels: int | None = None, max_pixels: int | None = None) -> dict:
        """``pixel_values`` (all patches of all images, concatenated) and ``image_grid_thw`` (images, 3)."""
        out = self.image_processor(images=images, return_tensors="pt", **self.size_kwargs(min_pixels, max_pixels))
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def tokens_per_image(self, image_grid_thw) -> list[int]:
        """Placeholder tokens the model expects for each image of a processed batch."""
        return [int(n) // self.merge_size**2 for n in image_grid_thw.prod(-1).tolist()]

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)


def add_family_tokens(tokenizer, arch_dir: Path) -> dict[str, int]:
    """Give a local (tiny) tokenizer the special tokens and chat template of the model family in ``arch_dir``
    (``special_tokens.json``, ``chat_template.jinja``); returns the config's ``*_token_id`` values for it."""
    spec_file = arch_dir / SPECIAL_TOKENS_FILE
    if not spec_file.exists():
        raise FileNotFoundError(f"{spec_file} is missing: a tiny vision-language model needs the family's special "
                                "tokens (image placeholder, vision start/end) listed there")
    spec = json.loads(spec_file.read_text())
    tokenizer.add_special_tokens({"additional_special_tokens": spec["additional_special_tokens"]},
                                 replace_extra_special_tokens=False)
    if spec.get("eos_token"):
        tokenizer.eos_token = spec["eos_token"]
    template = arch_dir / CHAT_TEMPLATE_FILE
    if template.exists():
        tokenizer.chat_template = template.read_text()
    return {field: tokenizer.convert_tokens_to_ids(tok) for field, tok in spec.get("config_token_ids", {}).items()}


def load_vision_processor(spec: BackboneSpec) -> tuple[VisionProcessor, dict[str, int]]:
    """The processor of ``spec``'s model and, for a tiny model, the config token ids pointing at the local
    tokenizer's copies of the family's special tokens (empty otherwise).

    Production: tokenizer and image processor from ``name_or_path`` (or ``tokenizer``). Tiny: the local
    ``tokenizer`` plus the family's special tokens and chat template, and the image processor settings of
    ``arch_config`` (``preprocessor_config.json``).
    """
    from transformers import AutoImageProcessor

    tokenizer = load_tokenizer(spec)
    token_ids: dict[str, int] = {}
    if spec.tiny:
        arch_dir = Path(resolve_path(spec.arch_config))
        arch_dir = arch_dir.parent if arch_dir.suffix == ".json" else arch_dir
        token_ids = add_family_tokens(tokenizer, arch_dir)
        source = arch_dir
    else:
        source = resolve_path(spec.name_or_path)
    image_processor = AutoImageProcessor.from_pretrained(str(source), backend=image_backend(),
                                                         trust_remote_code=spec.trust_remote_code,
                                                         **spec.revision_for(str(source)))
    return VisionProcessor(tokenizer, image_processor), token_ids
