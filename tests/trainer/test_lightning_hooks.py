"""tuneloop overrides three private Lightning hooks. These tests fail when a Lightning release renames them, stops
calling them, or changes what they receive, instead of the override silently doing nothing."""

from __future__ import annotations

import inspect

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import DeepSpeedStrategy

from trainer.cli import TuneloopCLI
from trainer.strategies import TuneloopDeepSpeedStrategy


def _calls(function, name: str) -> bool:
    return f"self.{name}()" in inspect.getsource(function)


def test_lightning_cli_still_overlays_checkpoint_hparams_through_parse_ckpt_path(tmp_path):
    # Lightning's CLI calls _parse_ckpt_path() while parsing; the base overlays the checkpoint's
    # hyper_parameters on the parsed config, which TuneloopCLI switches off.
    assert _calls(LightningCLI.__init__, "_parse_ckpt_path")
    assert list(inspect.signature(LightningCLI._parse_ckpt_path).parameters) == ["self"]
    assert TuneloopCLI._parse_ckpt_path is not LightningCLI._parse_ckpt_path

    # What the base would do with a checkpoint whose hparams differ from the command line, and what ours does.
    ckpt = tmp_path / "x.ckpt"
    torch.save({"hyper_parameters": {"prediction_mode": "generate"}}, ckpt)
    source = inspect.getsource(LightningCLI._parse_ckpt_path)
    assert "hyper_parameters" in source and "parse_object" in source

    class Probe:
        config = {"subcommand": "test", "test": {"ckpt_path": str(ckpt)}}
        overlaid = False

        class parser:
            @staticmethod
            def parse_object(hparams, config):
                Probe.overlaid = hparams
                return config

    class Config(dict):
        def __getattr__(self, key):
            return self[key]

    probe = Probe()
    probe.config = Config(subcommand="test", test={"ckpt_path": str(ckpt)})
    LightningCLI._parse_ckpt_path(probe)
    assert Probe.overlaid == {"test": {"model": {"prediction_mode": "generate"}}}  # the base overlays...
    Probe.overlaid = False
    TuneloopCLI._parse_ckpt_path(probe)
    assert Probe.overlaid is False  # ...ours does not


def test_deepspeed_strategy_still_formats_its_config_through_the_overridden_hooks():
    for name in ("_format_config", "_format_batch_size_and_grad_accum_config"):
        assert callable(getattr(DeepSpeedStrategy, name)), name
        assert list(inspect.signature(getattr(DeepSpeedStrategy, name)).parameters) == ["self"], name
        assert getattr(TuneloopDeepSpeedStrategy, name) is not getattr(DeepSpeedStrategy, name), name
    # _format_config is what writes the run-dependent config, and it calls the batch-size hook.
    assert _calls(DeepSpeedStrategy._format_config, "_format_batch_size_and_grad_accum_config")
    assert "_format_config()" in inspect.getsource(DeepSpeedStrategy)
    # backward keeps the scale_wrt_gas keyword the override sets.
    from deepspeed import DeepSpeedEngine

    assert "def backward(self, loss, retain_graph=False, scale_wrt_gas=True)" in inspect.getsource(DeepSpeedEngine)
