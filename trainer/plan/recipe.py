"""The planner's inputs: the recipe stack resolved exactly as ``tuneloop fit`` resolves it.

The files go through the CLI's own parser (``trainer.cli.TuneloopCLI``'s, built by the CLI itself), so stacking
(``-c`` left to right, a changed ``class_path`` keeping the ``init_args`` the new class accepts), validation and
defaults (``trainer.precision``: ``32-true`` when unset; the data cutoff: the DataModule's default) are the real
ones. Nothing is instantiated: no seed, no run directory, no model. The keys the planner reads become the
dataclasses the modules use (``BackboneSpec``, ``LoraSpec``, ``QuantSpec``, ``BatchSpec``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PRECISION = "32-true"  # Lightning's Trainer(precision=None)
_PRECISIONS = {
    "32": "32-true", "32-true": "32-true", "16": "16-mixed", "16-mixed": "16-mixed", "16-true": "16-true",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed", "bf16-true": "bf16-true", "64": "64-true",
    "64-true": "64-true",
}
_SEQ_LEN_KEYS = ("cutoff_len", "max_length")  # the instruction and encoder DataModules' token cutoffs


class PlanError(ValueError):
    """The recipe cannot be planned (missing file, missing key, unknown value)."""


@dataclass
class Recipe:
    """What the planner needs from a stacked recipe."""

    paths: list[str]
    model_class_path: str
    data_class_path: str | None
    backbone: Any  # modules.backbone.BackboneSpec
    lora: Any  # LoraSpec | None
    quant: Any  # QuantSpec | None
    batch: Any  # datamodules.batch.BatchSpec
    seq_len: int
    seq_len_source: str
    precision: str
    optimizer: str
    optimizer_args: dict = field(default_factory=dict)
    task: str | None = None
    num_labels: int | None = None

    module_class: Any = None  # the LightningModule class of model.class_path; describes how it builds its model
    model_args: dict = field(default_factory=dict)  # model.init_args as resolved

    @property
    def is_encoder(self) -> bool:
        """A sequence-classification model (head of ``num_labels``), as the module declares."""
        return self.module_class.peft_task_type == "SEQ_CLS"


# ----- the CLI's parser -----------------------------------------------------------------------------------
@functools.cache
def cli_parser():
    """The parser of ``tuneloop fit|validate|test|predict`` (their shared arguments: seed, trainer, model, data,
    run), made by ``TuneloopCLI`` itself and raising ``ArgumentError`` instead of exiting."""
    from trainer.cli import TuneloopCLI

    class ParserMade(Exception):
        pass

    class ParserOnly(TuneloopCLI):
        # LightningCLI's constructor builds the parser, then parses, seeds and instantiates: stop it at parsing.
        def init_parser(self, **kwargs):
            return super().init_parser(exit_on_error=False, **kwargs)

        def parse_arguments(self, parser, args) -> None:
            raise ParserMade(parser)

    try:
        ParserOnly(args=[], run=False)
    except ParserMade as made:
        return made.args[0]
    raise RuntimeError("TuneloopCLI did not reach parse_arguments")


def _resolve_file(path: str) -> Path:
    p = Path(path)
    if p.exists():
        return p
    if not p.is_absolute() and (REPO / p).exists():
        return REPO / p
    places = sorted({str(Path.cwd()), str(REPO)})
    raise PlanError(f"recipe not found: {path} (looked in {' and '.join(places)})")


def _parse(paths: list[str], defaults: bool = True):
    from jsonargparse import ArgumentError

    if not paths:
        raise PlanError("give at least one recipe with -c RECIPE")
    args = [arg for path in paths for arg in ("--config", str(_resolve_file(path)))]
    parser = cli_parser()
    try:
        return parser, parser.parse_args(args, defaults=defaults)
    except ArgumentError as e:
        raise PlanError(f"{' + '.join(paths)}: {e}") from None


def resolve_config(paths: list[str]) -> dict:
    """The recipe and overlays stacked left to right with every default filled in, as plain data: what
    ``tuneloop fit -c ... -c ... --print_config`` prints."""
    import yaml

    parser, config = _parse(paths)
    return yaml.safe_load(parser.dump(config, skip_unset=False))


def _written(paths: list[str], key: str) -> bool:
    """Whether the stacked files themselves set ``key`` (dotted), rather than a class default."""
    _, config = _parse(paths, defaults=False)
    return config.get(key) is not None


# ----- the planner's inputs -------------------------------------------------------------------------------
def _spec(cls, value: dict | None, key: str):
    """``value`` (checked by the parser) as ``cls``, validated by the dataclass itself."""
    if value is None:
        return None
    try:
        return cls(**value)
    except (TypeError, ValueError) as e:
        raise PlanError(f"{key}: {e}") from None


def _module_class(class_path: str):
    """The task module class named by ``model.class_path`` (the parser has checked that it is one)."""
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _optimizer(value: Any) -> tuple[str, dict]:
    from modules.base import default_optimizer

    if isinstance(value, dict):
        return value.get("class_path") or "torch.optim.AdamW", dict(value.get("init_args") or {})
    if value is None or value == f"{default_optimizer.__module__}.{default_optimizer.__name__}":
        return "modules.optim.AdamW", {}  # what modules.base.default_optimizer builds
    return str(value), {}


def _seq_len(paths: list[str], data_args: dict) -> tuple[int, str]:
    key = next((k for k in _SEQ_LEN_KEYS if data_args.get(k) is not None), None)
    if key is None:
        raise PlanError("the recipe has no data.init_args.cutoff_len / max_length: pass --seq-len")
    written = _written(paths, f"data.init_args.{key}")
    return int(data_args[key]), f"data.{key}" if written else f"data.{key} (default)"


def _num_labels(data_args: dict) -> tuple[str, int]:
    """Task and classifier outputs of an encoder recipe: binary 1, regression one per label field, else one
    per label."""
    from datamodules.encoder import target_encoding

    task = data_args.get("task")
    if task is None:
        raise PlanError("an encoder recipe needs data.init_args.task (binary, multiclass, multilabel, regression)")
    try:  # the DataModule's own rule (binary: 1 output, regression: one per field, else one per label)
        n = target_encoding(task, list(data_args.get("label_fields") or []), data_args.get("labels")).num_outputs
    except ValueError as e:
        raise PlanError(f"cannot tell the number of outputs of task {task!r}: {e}") from None
    return task, n


def read_recipe(paths: list[str], seq_len: int | None = None) -> Recipe:
    """Resolve ``paths`` and extract the planner's inputs (validated through the modules' dataclasses)."""
    from datamodules.batch import BatchSpec
    from modules.backbone import BackboneSpec, LoraSpec, QuantSpec, TinySpec

    config = resolve_config(paths)
    model, data = config.get("model") or {}, config.get("data") or {}
    model_cp, model_args = model.get("class_path"), dict(model.get("init_args") or {})
    data_cp, data_args = data.get("class_path"), dict(data.get("init_args") or {})
    if not model_cp:
        raise PlanError("model.class_path is not set (e.g. modules.causal_lm.CausalLMModule)")
    bb = model_args.get("backbone")
    if not isinstance(bb, dict) or not bb.get("name_or_path"):
        raise PlanError("model.init_args.backbone.name_or_path is not set")
    bb = dict(bb, tiny_size=_spec(TinySpec, bb.get("tiny_size") or {}, "model.init_args.backbone.tiny_size"))
    backbone = _spec(BackboneSpec, bb, "model.init_args.backbone")
    lora = _spec(LoraSpec, model_args.get("lora"), "model.init_args.lora")
    quant = _spec(QuantSpec, model_args.get("quant"), "model.init_args.quant")
    if quant is not None and lora is None:
        raise PlanError("model.quant (4-bit base) needs model.lora: a quantized base is trained through adapters")
    batch = _spec(BatchSpec, data_args.get("batch") or {}, "data.init_args.batch")

    source = "--seq-len"
    if seq_len is None:
        seq_len, source = _seq_len(paths, data_args)
    if seq_len < 1:
        raise PlanError(f"sequence length must be >= 1, got {seq_len}")

    raw_precision = (config.get("trainer") or {}).get("precision")
    precision = _PRECISIONS.get(str(raw_precision if raw_precision is not None else DEFAULT_PRECISION))
    if precision is None:
        raise PlanError(f"trainer.precision {raw_precision!r} is not one of {sorted(_PRECISIONS)}")

    optimizer, optimizer_args = _optimizer(model_args.get("optimizer"))
    recipe = Recipe(paths=list(paths), model_class_path=model_cp, data_class_path=data_cp, backbone=backbone,
                    lora=lora, quant=quant, batch=batch, seq_len=seq_len, seq_len_source=source,
                    precision=precision, optimizer=optimizer, optimizer_args=optimizer_args,
                    module_class=_module_class(model_cp), model_args=model_args)
    if recipe.is_encoder:
        recipe.task, recipe.num_labels = _num_labels(data_args)
    return recipe
