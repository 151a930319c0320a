"""``trainer/plan/recipe.py``: the planner resolves the same config as ``tuneloop fit`` for every recipe stack the
configs name in their headers, reads its inputs from it, and reads model files from local files only."""

from __future__ import annotations

import os
import re
from dataclasses import asdict

import pytest
import yaml

from tests.conftest import ROOT
from trainer.cli import TuneloopCLI
from trainer.plan import read_recipe, resolve_config


def _header_stacks() -> list[tuple[str, ...]]:
    """The ``-c`` stacks of every ``tuneloop fit|cv`` command in the configs' header comments."""
    stacks = set()
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        for line in path.read_text(encoding="utf-8").splitlines():
            command = re.match(r"#\s+tuneloop (?:fit|cv) (.*)", line)
            if command:
                stacks.add(tuple(re.findall(r"(?:-c|--config) (\S+)", command.group(1))))
    return sorted(stacks)


STACKS = _header_stacks()


def _print_config(capsys, stack) -> dict:
    with pytest.raises(SystemExit) as e:
        TuneloopCLI(args=["fit", *[a for path in stack for a in ("-c", path)], "--print_config"])
    assert e.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_recipe_and_overlay_is_in_a_header_stack():
    named = {path for stack in STACKS for path in stack}
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        assert str(path.relative_to(ROOT)) in named, f"{path}: no `tuneloop fit -c ...` header stacks it"
    assert len(STACKS) >= 30


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")  # pytest's own sys.argv
@pytest.mark.parametrize("stack", STACKS, ids=" + ".join)
def test_planner_resolves_the_config_tuneloop_fit_resolves(capsys, stack):
    cli = _print_config(capsys, stack)
    planned = resolve_config(list(stack))
    for section in ("model", "data", "trainer"):
        assert planned[section] == cli[section], section

    recipe = read_recipe(list(stack))
    model, data = cli["model"]["init_args"], cli["data"]["init_args"]
    assert (recipe.model_class_path, recipe.data_class_path) == (cli["model"]["class_path"], cli["data"]["class_path"])
    assert asdict(recipe.backbone) == model["backbone"]
    assert (asdict(recipe.lora) if recipe.lora else None) == model["lora"]
    assert (asdict(recipe.quant) if recipe.quant else None) == model.get("quant")
    assert asdict(recipe.batch) == data["batch"]
    assert recipe.seq_len == data.get("cutoff_len", data.get("max_length"))
    assert recipe.precision == (cli["trainer"]["precision"] or "32-true")
    assert recipe.optimizer == model["optimizer"]["class_path"]
    assert recipe.model_args == model


def test_a_default_cutoff_is_labelled_as_the_default(tmp_path):
    recipe = "configs/sft/komt-llama2-13b-lora.yaml"
    written = read_recipe([recipe])
    assert (written.seq_len, written.seq_len_source) == (256, "data.cutoff_len")
    text = re.sub(r"\n    cutoff_len: .*", "", (ROOT / recipe).read_text(encoding="utf-8"))
    assert "cutoff_len" not in text
    path = tmp_path / "no-cutoff.yaml"
    path.write_text(text, encoding="utf-8")
    default = read_recipe([str(path)])
    assert (default.seq_len, default.seq_len_source) == (256, "data.cutoff_len (default)")  # the DataModule's
    assert read_recipe([str(path)], seq_len=64).seq_len_source == "--seq-len"


def test_model_files_are_read_from_local_files_only(monkeypatch):
    import transformers

    from trainer.plan import build_meta_model

    calls = []
    for auto in (transformers.AutoConfig, transformers.AutoTokenizer):
        original = auto.from_pretrained

        def spy(*args, _original=original, _name=auto.__name__, **kwargs):
            calls.append((_name, kwargs.get("local_files_only")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    build_meta_model(read_recipe(["configs/intent/exaone-4.0-1.2b-lora.yaml", "configs/debug.yaml"]))
    assert {name for name, _ in calls} == {"AutoConfig", "AutoTokenizer"}
    assert all(local is True for _, local in calls), calls
    assert "HF_HUB_OFFLINE" not in os.environ  # the process environment is left alone
