"""Strategy presets: names resolve, CUDA-only presets refuse CPU with advice, QLoRA storage is fixed up; FSDP1
wraps each transformer block; DeepSpeed's config and its optimizer step agree with the recipe.

No GPU is needed: the FSDP1 and DeepSpeed code runs on CPU (gloo, DeepSpeed's CPU accelerator) with the smallest
harness around Lightning's methods, each explained where it is used.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from trainer.cli import TuneloopCLI
from trainer.strategies import (CUDA_ONLY, PRESETS, FSDP2Strategy, NoSplitModulesPolicy, StrategyError,
                                TuneloopDeepSpeedStrategy, preset_config, quant_storage_for)


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
    assert {preset_config(n, cuda=True)["class_path"] for n in CUDA_ONLY[1:]} == {
        "trainer.strategies.TuneloopDeepSpeedStrategy"}
    assert isinstance(preset_config("fsdp1", cuda=True)["init_args"]["auto_wrap_policy"], NoSplitModulesPolicy)
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


# ----------------------------------------------------------------------------------------------------- FSDP1


def _tiny_llama(lora: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, vocab_size=100))
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    return model


@pytest.mark.parametrize("lora", [False, True])
def test_no_split_modules_policy_selects_exactly_the_decoder_layers(lora):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = _tiny_llama(lora)
    policy = NoSplitModulesPolicy()
    assert policy(module=model, recurse=True, nonwrapped_numel=0)  # torch calls it by keyword, root first
    chosen = [m for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)]
    assert len(chosen) == 2 and all(type(m) is LlamaDecoderLayer for m in chosen)
    assert all(policy(module=m, recurse=True, nonwrapped_numel=0) for m in model.modules())  # always recurses

    class Block(torch.nn.Linear):
        pass

    class Other(torch.nn.Module):  # a new root (another model) is read again
        _no_split_modules = ["Block"]

        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(2, 2), Block(2, 2)])

    other = Other()
    assert policy(other, True, 0) and [policy(m, False, 0) for m in other.modules()] == [False, False, True, True]
    explicit = NoSplitModulesPolicy(block_names=["LlamaMLP"])
    explicit(model, True, 0)
    assert sum(explicit(m, False, 0) for m in model.modules()) == 2
    with pytest.raises(TypeError, match="declares no transformer blocks"):
        NoSplitModulesPolicy()(torch.nn.Sequential(torch.nn.Linear(2, 2)), True, 0)


def test_no_split_modules_policy_by_class_path_in_a_config():
    """The policy can be named in a YAML strategy (Lightning refuses to build an FSDP Trainer on CPU, so only
    the CLI's parser and the strategy are exercised)."""
    from lightning.pytorch.cli import LightningArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy

    parser = LightningArgumentParser()
    parser.add_argument("--strategy", type=FSDPStrategy)
    cfg = parser.parse_object({"strategy": {
        "class_path": "lightning.pytorch.strategies.FSDPStrategy",
        "init_args": {"auto_wrap_policy": {"class_path": "trainer.strategies.NoSplitModulesPolicy",
                                           "init_args": {"block_names": ["LlamaDecoderLayer"]}}}}})
    policy = parser.instantiate_classes(cfg).strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, NoSplitModulesPolicy) and policy.block_names == ["LlamaDecoderLayer"]


def test_fsdp1_preset_wraps_each_decoder_layer(tmp_path):
    """The preset's Lightning ``FSDPStrategy`` (built on CPU) wraps a LightningModule holding a LoRA Llama: FSDP
    units are the root and each decoder layer, and a training step runs through them.

    Harness: Lightning's ``FSDPStrategy._setup_model`` calls ``FullyShardedDataParallel(module, cpu_offload=...,
    mixed_precision=..., sharding_strategy=..., device_id=root_device.index, **strategy.kwargs)``. On CPU the
    index is ``None`` and FSDP1 then refuses ("FSDP needs a non-CPU accelerator device"), so the same call is
    made here with ``device_id=torch.device("cpu")``, which FSDP1 accepts, in a one-process gloo group (where
    FSDP runs FULL_SHARD as NO_SHARD: the units are real, sharding over several ranks is not exercised).
    """
    import lightning.pytorch as pl
    import torch.distributed as dist
    from lightning.pytorch.cli import instantiate_class
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    strategy = instantiate_class((), preset_config("fsdp1", cuda=True))  # as TuneloopCLI.instantiate_trainer
    assert isinstance(strategy, FSDPStrategy) and isinstance(strategy.kwargs["auto_wrap_policy"], NoSplitModulesPolicy)

    class Holder(pl.LightningModule):  # what Lightning wraps: the LightningModule, the model built inside it
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, **batch):
            return self.model(**batch)

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = FSDP(Holder(_tiny_llama()), cpu_offload=strategy.cpu_offload,
                       sharding_strategy=strategy.sharding_strategy, device_id=torch.device("cpu"), **strategy.kwargs)
        units = [m.module for m in wrapped.modules() if isinstance(m, FSDP)]
        assert [type(u).__name__ for u in units] == ["Holder", "LlamaDecoderLayer", "LlamaDecoderLayer"]
        assert sum(isinstance(m, LlamaDecoderLayer) for m in wrapped.modules()) == 2
        ids = torch.randint(0, 100, (2, 6))
        loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None for n, p in wrapped.named_parameters() if "lora_" in n)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------- DeepSpeed


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"])
def test_deepspeed_config_agrees_with_the_recipe(tmp_path, monkeypatch, name):
    """The DeepSpeed config Lightning writes at fit time, for a preset built by the CLI from the SFT recipe:
    micro batch 4, accumulation 128 / (4 x 1 process) = 32, clipping 1.0, bf16, the preset's ZeRO stage/offload.

    Harness: the CLI refuses CUDA-only presets without a GPU, so only that refusal is lifted (``CUDA_ONLY``
    emptied); the Trainer is then built on CPU as usual. The three calls below are what ``Trainer.fit`` does
    before ``configure_model``, whose ``DeepSpeedStrategy.model_sharded_context`` formats the config with
    ``_init_config_if_needed``; nothing of DeepSpeed runs.
    """
    monkeypatch.setattr("trainer.strategies.CUDA_ONLY", ())
    cli = _cli(tmp_path, "configs/sft/komt-llama2-13b-lora.yaml", f"--trainer.strategy={name}",
               "--trainer.accelerator=cpu", "--trainer.precision=bf16-mixed")
    trainer, strategy = cli.trainer, cli.trainer.strategy
    assert type(strategy) is TuneloopDeepSpeedStrategy and trainer.accumulate_grad_batches == 32
    strategy._lightning_module = cli.model  # Trainer.fit
    trainer._data_connector.attach_data(cli.model, datamodule=cli.datamodule)  # Trainer._fit_impl
    strategy._init_config_if_needed()  # DeepSpeedStrategy.model_sharded_context (and .setup)
    cfg = strategy.config
    assert cfg["train_micro_batch_size_per_gpu"] == 4 == cli.datamodule.batch.micro_batch_size
    assert cfg["gradient_accumulation_steps"] == 32
    assert cfg["gradient_clipping"] == 1.0 == trainer.gradient_clip_val
    assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
    zero = cfg["zero_optimization"]
    assert zero["stage"] == (2 if name == "deepspeed_zero2" else 3)
    offload = name.endswith("offload")
    assert (zero.get("offload_optimizer", {}).get("device"), zero.get("offload_param", {}).get("device")) == (
        ("cpu", "cpu") if offload else (None, None))
    assert cfg.get("zero_force_ds_cpu_optimizer", True) is not offload  # the recipe's AdamW may step the CPU copy


def _deepspeed_cpu_steps() -> dict:
    """One optimizer step (8 samples = micro batch 2 x accumulation 4) of a linear regression with plain SGD
    (lr 1) through Lightning + DeepSpeed on DeepSpeed's CPU accelerator; returns, per case, the parameter update
    divided by the expected one (the gradient of the mean loss over the 8 samples, clipped to the Trainer's
    norm) and the DeepSpeed config. Runs in a subprocess: DeepSpeed sets process-wide environment variables
    and a process group.

    Harness: ``DeepSpeedStrategy.setup_environment`` refuses a non-CUDA accelerator and
    ``setup_distributed`` refuses device indices that are not the local rank, and ``deepspeed.initialize`` is
    given ``root_device.index`` as the device rank (``None`` for a bare ``cpu`` device). ``OnCPU`` does what
    they do less the two checks, and the strategy is given the device ``cpu:0``. The config, the engine, its
    backward, clipping and step are the real ones.
    """
    import deepspeed
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DeepSpeedStrategy
    from torch.utils.data import TensorDataset

    from datamodules.base import TuneloopDataModule
    from datamodules.batch import BatchSpec

    def on_cpu(cls):
        class OnCPU(cls):
            def setup_environment(self) -> None:
                self.accelerator.setup_device(self.root_device)
                self.set_world_ranks()
                self._init_deepspeed_distributed()

        return OnCPU

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
            torch.nn.init.constant_(self.net.weight, 0.1)
            torch.nn.init.zeros_(self.net.bias)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x).float(), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1.0)

    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    reference = Regression()
    torch.nn.functional.mse_loss(reference.net(x), y).backward()
    grad = torch.cat([p.grad.flatten() for p in reference.net.parameters()])
    clip = float(grad.norm()) / 2  # clipping is active for the mean gradient

    cases = {"lightning_zero2_unclipped": (DeepSpeedStrategy, {"stage": 2}, None, "32-true")}
    for name in ("deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"):
        cases[name] = (TuneloopDeepSpeedStrategy, preset_config(name, cuda=True)["init_args"], clip, "32-true")
    cases["deepspeed_zero3_bf16"] = (TuneloopDeepSpeedStrategy, {"stage": 3}, clip, "bf16-mixed")
    results = {}
    for label, (cls, init_args, clip_val, precision) in cases.items():
        data = TuneloopDataModule(batch=BatchSpec(global_batch_size=8, micro_batch_size=2))
        data.splits["train"] = TensorDataset(x, y)
        strategy = on_cpu(cls)(parallel_devices=[torch.device("cpu", 0)], **init_args)
        trainer = pl.Trainer(accelerator="cpu", strategy=strategy, precision=precision, gradient_clip_val=clip_val,
                             max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.accumulate_grad_batches = data.batch.accumulation(trainer.world_size)  # as TuneloopCLI does
        module = Regression()
        trainer.fit(module, datamodule=data)
        with deepspeed.zero.GatheredParameters(list(module.net.parameters())):
            update = torch.cat([module.net.weight.flatten() - 0.1, module.net.bias.flatten()]).float()
        expected = -grad * (min(1.0, clip_val / (float(grad.norm()) + 1e-6)) if clip_val else 1.0)
        cfg = strategy.config
        results[label] = {"ratio": (update / expected).tolist(), "global_step": trainer.global_step,
                          "config": {k: cfg.get(k) for k in ("train_micro_batch_size_per_gpu",
                                                             "gradient_accumulation_steps", "gradient_clipping",
                                                             "bf16", "fp16")},
                          "clip": clip_val}
    return results


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("c++") is None,
                    reason="DeepSpeed compiles its CPU communication op on first use: needs a C++ compiler")
def test_deepspeed_optimizer_step_is_the_recipe_step_on_cpu():
    """Lightning divides the loss by the accumulation steps and DeepSpeed's ``engine.backward`` divides it
    again: with Lightning's strategy an optimizer step moves 1/4 as far as it should at accumulation 4 (and
    clipping sees a 4x smaller norm). The presets' ``TuneloopDeepSpeedStrategy`` takes the recipe's step:
    the clipped mean gradient over the global batch, at ZeRO-2, ZeRO-3, ZeRO-3 offload, and in bf16."""
    code = ("import json; from tests.trainer.test_strategies import _deepspeed_cpu_steps; "
            "print('RESULT ' + json.dumps(_deepspeed_cpu_steps()))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert results["lightning_zero2_unclipped"]["ratio"] == pytest.approx([0.25] * 5, rel=1e-5)
    for label, r in results.items():
        assert r["global_step"] == 1
        cfg = r["config"]
        assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (2, 4)
        assert cfg["gradient_clipping"] == (r["clip"] or 0.0)
        assert cfg["bf16"] == ({"enabled": True} if label.endswith("bf16") else None) and cfg["fp16"] is None
        if label.startswith("deepspeed_"):
            assert r["ratio"] == pytest.approx([1.0] * 5, rel=2e-2 if label.endswith("bf16") else 1e-5), label
