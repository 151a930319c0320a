"""``tuneloop plan``: exact parameter counts and a per-GPU memory estimate for every strategy preset, before
launch and without weights.

- ``recipe.py``: the recipe stack, resolved by the CLI's own parser (``tuneloop fit -c ... -c ...``).
- ``meta.py``: the model on the meta device, 4-bit and LoRA as the task module applies them, PEFT's count.
- ``memory.py``: bytes of weights, gradients, optimizer states and activations, per strategy (the assumptions).
- ``report.py``: ``plan()``, all of it as one JSON-able dict; ``render.py``: the tables; ``cli.py``: the command.

Torch, transformers, PEFT and Lightning load inside the functions that need them, so ``--help`` is instant.
"""

from trainer.plan.cli import build_parser, main
from trainer.plan.memory import GIB, activations, inventory, strategy_memory
from trainer.plan.meta import Built, build_meta_model
from trainer.plan.recipe import PlanError, Recipe, read_recipe, resolve_config
from trainer.plan.render import render_text
from trainer.plan.report import plan

__all__ = [
    "GIB", "Built", "PlanError", "Recipe", "activations", "build_meta_model", "build_parser", "inventory", "main",
    "plan", "read_recipe", "render_text", "resolve_config", "strategy_memory",
]
