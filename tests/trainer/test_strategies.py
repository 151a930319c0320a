"""Strategy presets: names resolve, CUDA-only presets refuse CPU with advice, QLoRA storage is fixed up."""

import pytest

from tests.conftest import ROOT
from trainer.cli import TuneloopCLI
from trainer.strategies import CUDA_ONLY, PRESETS, FSDP2Strategy, StrategyError, preset_config, quant_storage_for


def test_every_preset_has_a_config_overlay_headed_by_its_command():
    for name in PRESETS:
        text = (ROOT / "configs" / "strategy" / f"{name}.yaml").read_text()
        assert f"strategy: {name}" in text and "tuneloop fit" in text.splitlines()[1]


@pytest.mark.parametrize("name", CUDA_ONLY)
def test_cuda_only_presets_refuse_cpu_with_advice(name):
    with pytest.raises(StrategyError, match=r"needs CUDA GPUs .* --trainer.strategy=fsdp .* --trainer.strategy=ddp"):
        preset_config(name, cuda=False)


def test_preset_configs_on_gpu():
    assert preset_config("ddp", cuda=True) == "ddp"
    assert preset_config("fsdp", cuda=True)["init_args"]["process_group_backend"] == "nccl"
    assert preset_config("fsdp", cuda=False)["init_args"]["process_group_backend"] == "gloo"
    z2, z3, off = (preset_config(n, cuda=True)["init_args"] for n in CUDA_ONLY[1:])
    assert (z2["stage"], z3["stage"], off["stage"]) == (2, 3, 3)
    assert off["offload_optimizer"] and off["offload_parameters"] and not z3["offload_optimizer"]
    with pytest.raises(StrategyError, match="unknown strategy preset"):
        preset_config("zero9", cuda=True)


def test_quant_storage_rule():
    assert quant_storage_for("fsdp", "bfloat16") == "bfloat16"
    assert quant_storage_for("deepspeed_zero3", "float16") == "float16"
    assert quant_storage_for("ddp", "bfloat16") is None and quant_storage_for("deepspeed_zero2", "bfloat16") is None


def _cli(tmp_path, recipe, *extra):
    return TuneloopCLI(args=["-c", recipe, "-c", "configs/debug.yaml", f"--run.root={tmp_path}",
                             "--trainer.logger=false", *extra], run=False)


def test_cli_refuses_deepspeed_on_cpu_before_building_anything(tmp_path):
    with pytest.raises(StrategyError, match="deepspeed_zero3"):
        _cli(tmp_path, "configs/sft/komt-llama2-13b-lora.yaml", "--trainer.strategy=deepspeed_zero3")


def test_cli_fsdp_preset_makes_fsdp2_and_sets_qlora_storage(tmp_path, capsys):
    cli = _cli(tmp_path, "configs/intent/exaone-4.0-1.2b-qlora.yaml", "-c", "configs/strategy/fsdp.yaml",
               "--trainer.accelerator=cpu")
    assert isinstance(cli.trainer.strategy, FSDP2Strategy)
    assert cli.model.quant.quant_storage == "bfloat16" == cli.model.quant.compute_dtype
    assert "quant_storage set to bfloat16" in capsys.readouterr().out
    with pytest.raises(StrategyError, match="quant_storage must equal compute_dtype"):
        _cli(tmp_path, "configs/intent/exaone-4.0-1.2b-qlora.yaml", "--trainer.strategy=fsdp",
             "--trainer.accelerator=cpu", "--model.init_args.quant.quant_storage=float32")
