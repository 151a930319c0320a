"""The declared seams between a task module, its DataModule and the trainer: checked once, with errors that say
what is missing instead of an AttributeError deep inside a step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from datamodules.encoder import EncoderDataModule
from datamodules.instruction import InstructionDataModule
from datamodules.vision_instruction import VisionInstructionDataModule
from modules.backbone import BackboneSpec, LoraSpec
from modules.causal_lm import CausalLMModule, InstructionData
from modules.vision_language import VisionInstructionData
from tests.conftest import TOKENIZER


def _module(lora=None):
    spec = BackboneSpec(name_or_path="komt-llama2-13b", arch_config="configs/models/komt-llama2-13b",
                        tokenizer=str(TOKENIZER), tiny=True)
    return CausalLMModule(backbone=spec, lora=lora)


def test_the_data_protocols_match_the_real_datamodules():
    assert isinstance(InstructionDataModule(format="alpaca", train_file="x.jsonl"), InstructionData)
    assert isinstance(VisionInstructionDataModule(train_file="x.jsonl"), VisionInstructionData)
    assert not isinstance(EncoderDataModule(task="regression", text_fields=["t"], label_fields=["y"], train_file="x.csv"),
                          InstructionData)


def test_a_module_given_the_wrong_datamodule_says_which_one_it_needs():
    module = _module()
    module._trainer = SimpleNamespace(datamodule=EncoderDataModule(task="regression", text_fields=["t"], label_fields=["y"],
                                                                   train_file="x.csv"))
    with pytest.raises(TypeError, match=r"CausalLMModule needs a DataModule such as "
                                        r"datamodules\.instruction\.InstructionDataModule .*EncoderDataModule, "
                                        r"which lacks .*sample_batch"):
        module.setup("fit")


def test_a_datamodule_without_preprocessing_says_how_to_give_it():
    dm = InstructionDataModule(format="alpaca", train_file="x.jsonl")
    with pytest.raises(RuntimeError, match=r"use_preprocessing\(module.tokenizer, module.processor\)"):
        dm.tokenizer
    module = _module()
    dm.use_preprocessing(module.tokenizer, module.processor)
    assert dm.tokenizer is module.tokenizer
    vdm = VisionInstructionDataModule(train_file="x.jsonl")
    with pytest.raises(TypeError, match="needs the model's processor"):
        vdm.use_preprocessing(module.tokenizer, None)


def test_adapter_seam_follows_the_lora_setting():
    assert _module(lora=LoraSpec()).has_adapter
    full = _module()
    assert not full.has_adapter and full.adapter.lora is None
