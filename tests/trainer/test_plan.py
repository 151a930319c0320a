"""``tuneloop plan``: exact parameter counts on the meta device, PEFT's own line, memory estimates checked
against real tensors on CPU, accumulation, and the command line."""

from __future__ import annotations

import importlib.util
import json

import peft  # noqa: F401  - heavy imports at collection, so test durations show the planner's own time
import pytest
import torch
import transformers  # noqa: F401

from modules.vision_language import VisionLanguageModule
from tests.conftest import ROOT
from trainer.plan import PlanError, build_meta_model, main, plan, read_recipe, resolve_config

EXAONE_LORA = "configs/intent/exaone-4.0-1.2b-lora.yaml"
KOMT_LORA = "configs/sft/komt-llama2-13b-lora.yaml"
KOMT_QLORA = "configs/sft/komt-llama2-13b-qlora.yaml"
BERT = "configs/encoder/waam-multilabel.yaml"
DEBUG = "configs/debug.yaml"

QWEN_VL_QLORA = """
# Qwen2.5-VL-32B QLoRA through the causal-LM module (no vision-specific defaults), for skip-pattern checks.
trainer:
  precision: bf16-mixed
model:
  class_path: modules.causal_lm.CausalLMModule
  init_args:
    backbone:
      name_or_path: Qwen/Qwen2.5-VL-32B-Instruct
      arch_config: configs/models/qwen2.5-vl-32b
      dtype: bfloat16
      gradient_checkpointing: true
    lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}
    quant: {quant_type: nf4, double_quant: true, compute_dtype: bfloat16}
data:
  class_path: datamodules.instruction.InstructionDataModule
  init_args:
    format: alpaca
    cutoff_len: 1024
    batch: {global_batch_size: 16, micro_batch_size: 1}
"""


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_plan_memory", ROOT / "scripts" / "bench_plan_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _overlay(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ----- exact counts ---------------------------------------------------------------------------------------
def test_exact_parameter_counts_of_production_recipes():
    bert = plan([BERT])
    assert bert["model"]["class"] == "BertForSequenceClassification" and bert["model"]["num_labels"] == 6
    assert bert["params"]["total"] == 109_482_240 + 768 * 6 + 6  # BertModel (with pooler) + 6-label classifier
    assert bert["params"]["trainable"] == bert["params"]["all"] == bert["params"]["total"]  # full fine-tuning

    komt = plan([KOMT_LORA])
    assert komt["model"]["class"] == "LlamaForCausalLM"
    assert komt["params"]["total"] == 13_015_864_320
    # LoRA r=32 on q_proj and v_proj (5120 -> 5120) in 40 layers (the Alpaca-LoRA targets).
    h = 5120
    assert komt["params"]["trainable"] == 40 * 32 * 2 * (h + h) == 26_214_400

    exaone = plan([EXAONE_LORA])
    assert exaone["params"]["total"] == 1_279_391_488  # tied embeddings counted once


def test_exaone_lora_count_computed_independently():
    # MODELS.md: hidden 2048, intermediate 4096, 32 heads x head_dim 64, 8 KV heads, 30 layers.
    hidden, inter, kv = 2048, 4096, 8 * 64
    shapes = {"q": (hidden, 32 * 64), "k": (hidden, kv), "v": (hidden, kv), "o": (32 * 64, hidden),
              "gate": (hidden, inter), "up": (hidden, inter), "down": (inter, hidden)}
    r = 8
    expected = sum(r * (n_in + n_out) for n_in, n_out in shapes.values()) * 30
    assert expected == 7_618_560
    result = plan([EXAONE_LORA])
    assert result["params"]["trainable"] == expected
    assert result["params"]["all"] == 1_279_391_488 + expected
    assert result["params"]["peft_line"] == (
        f"trainable params: {expected:,d} || all params: {1_279_391_488 + expected:,d} || "
        f"trainable%: {100 * expected / (1_279_391_488 + expected):.4f}")


def test_qlora_counts_match_peft_for_4bit_and_keep_the_head_unquantized():
    result = plan([KOMT_QLORA])
    p = result["params"]
    # Every Linear but lm_head is 4-bit; PEFT counts Params4bit as numel x 2 x element_size, i.e. the original
    # parameter count for even-sized weights, so the totals equal the bf16 LoRA recipe's.
    assert p["total"] == 13_015_864_320 and p["trainable"] == plan([KOMT_LORA])["params"]["trainable"]
    assert p["quantization_skip_patterns"] == ["lm_head"] and p["unquantized_linear_modules"] == 1
    assert p["four_bit"] == 13_015_864_320 - 2 * 32000 * 5120 - 40 * 2 * 5120 - 5120  # minus embed, head, norms
    w = result["bytes"]["weights_by_dtype"]
    assert set(w) == {"4bit", "float32"}  # prepare_model_for_kbit_training upcasts what is not 4-bit
    assert 0.5 * p["four_bit"] < w["4bit"] < 0.54 * p["four_bit"]  # 4 bits + ~0.127 bit of constants


# ----- PEFT's line against PEFT on a real tiny model -------------------------------------------------------
LORA_ENCODER = "model:\n  init_args:\n    lora: {r: 4, alpha: 8, target_modules: all-linear}\n"


@pytest.mark.parametrize("case", ["causal-lora", "encoder-lora", "causal-qlora"])
def test_peft_line_matches_peft_on_a_real_tiny_model(tmp_path, capsys, case):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from modules.backbone import apply_lora, build_model, load_tokenizer

    configs = {
        "causal-lora": [EXAONE_LORA, DEBUG],
        "encoder-lora": [BERT, DEBUG, _overlay(tmp_path, "lora.yaml", LORA_ENCODER)],
        "causal-qlora": [KOMT_QLORA, DEBUG],
    }[case]
    recipe = read_recipe(configs)
    tokenizer = load_tokenizer(recipe.backbone)
    auto = AutoModelForSequenceClassification if recipe.is_encoder else AutoModelForCausalLM
    extra = {"num_labels": recipe.num_labels} if recipe.is_encoder else {}
    model = build_model(auto, recipe.backbone, tokenizer, quant=recipe.quant, device="cpu",
                        tiny_dir=tmp_path / "base" if recipe.quant is not None else None, **extra)
    capsys.readouterr()
    model = apply_lora(model, recipe.lora, "SEQ_CLS" if recipe.is_encoder else "CAUSAL_LM",
                       quantized=recipe.quant is not None)
    real_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trainable params")]
    assert len(real_line) == 1
    if recipe.quant is not None:
        assert any(p.__class__.__name__ == "Params4bit" for p in model.parameters())  # really 4-bit
    planned = plan(configs)
    assert planned["params"]["peft_line"] == real_line[0]
    print(f"{case}: {real_line[0]}")


# ----- memory: estimate vs tensors of a real training step ---------------------------------------------------
def _measured_cases(tmp_path):
    bench = _load_bench()
    cases = dict(bench.default_cases(tmp_path))
    return bench, cases


@pytest.mark.parametrize("label", [
    "tiny llama, LoRA r=32",
    "small llama (h=256, 4 layers), full fine-tuning",
    "small llama (h=256, 4 layers), LoRA r=32",
    "small llama (h=256, 4 layers), LoRA r=32, bf16-true",
    "tiny bert, multi-label, full fine-tuning",
    pytest.param("small llama (h=256, 4 layers), QLoRA r=32 (4-bit on CPU)", marks=pytest.mark.slow),
])
def test_estimate_matches_measured_weights_gradients_and_optimizer(tmp_path, label):
    bench, cases = _measured_cases(tmp_path)
    rows = bench.compare(cases[label])
    bench.print_comparison(label, rows)
    for key, row in rows.items():
        assert row["measured"] > 0 or key == "gradients" and row["estimated"] == 0
        assert abs(row["error_pct"]) <= 15.0, (label, key, row)


def test_activation_estimate_is_close_to_what_autograd_saves(tmp_path):
    # Korthikanti's per-layer count (generalised to SwiGLU, plus LoRA dropout copies) against the bytes saved
    # for backward on CPU (fp32, no checkpointing); looser than weights: the formula is an approximation by
    # design. scripts/bench_plan_memory.py prints more cases.
    bench = _load_bench()
    label, configs, attention = bench.activation_cases(tmp_path)[1]  # small llama, LoRA r=32
    row = bench.compare_activations(configs, attention)
    print(f"{label}: estimated {row['estimated']:,d} B, measured {row['measured']:,d} B, {row['error_pct']:+.1f}%")
    assert abs(row["error_pct"]) <= 25.0, row


# ----- strategies, accumulation, activations ---------------------------------------------------------------
def test_sharding_divides_by_world_size_and_the_recommendation_is_the_simplest_that_fits():
    one = plan([KOMT_LORA], gpus=1, gpu_memory=80)
    eight = plan([KOMT_LORA], gpus=8, gpu_memory=80)
    s1, s8 = one["strategies"], eight["strategies"]
    assert set(s1) == {"ddp", "fsdp", "fsdp1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"}
    assert s8["ddp"]["gib_per_gpu"] == s1["ddp"]["gib_per_gpu"]  # replicated
    assert s8["fsdp"]["gib_per_gpu"] < s1["fsdp"]["gib_per_gpu"] / 2
    assert s8["deepspeed_zero3"]["gib_per_gpu"] < s8["deepspeed_zero2"]["gib_per_gpu"]
    assert s8["deepspeed_zero3_offload"]["gib_per_gpu"] == min(e["gib_per_gpu"] for e in s8.values())
    assert s8["fsdp1"]["gib_per_gpu"] == s8["fsdp"]["gib_per_gpu"]
    # bf16 13B weights (~24 GiB) + LoRA states fit one 80 GiB card with DDP; not a 24 GiB one.
    assert one["recommended"] == "ddp"
    small = plan([KOMT_LORA], gpus=8, gpu_memory=24)
    assert not small["strategies"]["ddp"]["fits"]
    assert small["recommended"] == "fsdp"
    none = plan([KOMT_LORA], gpus=1, gpu_memory=2)
    assert none["recommended"] is None


def test_strategy_names_are_the_presets():
    from trainer.strategies import PRESETS, RECOMMEND_ORDER, SHARDS_PARAMETERS

    assert set(RECOMMEND_ORDER) == set(PRESETS) - {"fsdp1"}
    assert [s for s in PRESETS if s in RECOMMEND_ORDER] == list(RECOMMEND_ORDER)  # simplest first
    result = plan([KOMT_QLORA], gpus=1, gpu_memory=80)
    assert tuple(result["strategies"]) == PRESETS  # one row per preset, in the presets' order
    # The 4-bit storage note is given exactly for the presets that shard parameters.
    noted = {name for name, e in result["strategies"].items() if any("quant_storage" in n for n in e["notes"])}
    assert noted == set(SHARDS_PARAMETERS)
    assert result["recommended"] == RECOMMEND_ORDER[0]  # everything fits 80 GiB: the simplest preset


def test_qlora_13b_fits_a_24_gib_card():
    result = plan([KOMT_QLORA], gpus=1, gpu_memory=24)
    assert result["strategies"]["ddp"]["fits"] and result["recommended"] == "ddp"
    assert 8 < result["strategies"]["ddp"]["gib_per_gpu"] < 24
    assert any("quant_storage" in note for note in result["strategies"]["fsdp"]["notes"])
    assert not any("quant_storage" in note for note in result["strategies"]["ddp"]["notes"])


@pytest.mark.parametrize("gpus, nodes, expected", [(1, 1, 32), (8, 1, 4), (4, 2, 4), (8, 4, 1), (3, 1, None),
                                                   (8, 8, None)])
def test_accumulation_for_devices_and_nodes(gpus, nodes, expected):
    result = plan([KOMT_LORA, DEBUG], gpus=gpus, nodes=nodes)  # global 128, micro 4
    acc = result["accumulation"]
    if expected is None:
        assert acc["accumulate_grad_batches"] is None
        world = gpus * nodes
        for text in ("global_batch_size=128", "micro_batch_size=4", f"world_size={world}"):
            assert text in acc["error"]
    else:
        assert acc == {"accumulate_grad_batches": expected, "error": None}


def test_activation_estimate_follows_the_documented_formula():
    result = plan([BERT])  # no checkpointing, bf16-mixed, GeLU MLP with I = 4h: Korthikanti's 34·s·b·h
    act = result["activations"]
    s, b, h, layers = 128, 16, 768, 12
    assert act["layers"] == layers * 34 * s * b * h
    eager = plan([BERT], attention="eager")["activations"]
    assert eager["layers"] == layers * (34 * s * b * h + 5 * 12 * s * s * b)
    ck = plan([KOMT_LORA])["activations"]  # gradient checkpointing: 2sbh per layer + one full layer
    assert ck["gradient_checkpointing"] and ck["layers"] == 40 * 2 * 256 * 4 * 5120 + ck["per_layer_full"]
    # The chunked loss: the bf16 head output (saved) and its gradient, one fp32 chunk of at most 1048 positions
    # (2**25 // 32000; here the micro batch's 1024), never the whole fp32 logits (4 * 256 * 32000 * 4 bytes).
    assert ck["loss_chunk_positions"] == 1024 and ck["logits_saved"] == 4 * 256 * 32000 * 2
    assert ck["logits"] == 2 * 4 * 256 * 32000 * 2 + 1024 * 32000 * 4
    long = plan([KOMT_LORA], seq_len=4096)["activations"]  # 16384 positions: chunks of 1048
    assert long["loss_chunk_positions"] == 1048
    plain = 4 * 4096 * 32000 * (4 + 2)  # what the plain loss kept: fp32 log-softmax and the bf16 head output
    assert long["logits"] == 2 * 4 * 4096 * 32000 * 2 + 1048 * 32000 * 4 < 0.75 * plain
    longer = plan([KOMT_LORA], seq_len=512)
    assert longer["batch"]["seq_len"] == 512 and longer["activations"]["layers"] == 2 * ck["layers"]


@pytest.mark.slow
def test_qwen2_5_vl_32b_qlora_keeps_the_vision_tower_unquantized(tmp_path):
    import transformers
    from transformers import AutoConfig

    recipe = "configs/vlm/qwen2.5-vl-32b-qlora.yaml"
    built = build_meta_model(read_recipe([recipe]))
    assert built.base_class == "Qwen2_5_VLForConditionalGeneration"
    # LoRA r=16 on the language model's 7 projections per layer only (the vision tower is frozen), as the module.
    text = AutoConfig.from_pretrained(str(ROOT / "configs/models/qwen2.5-vl-32b")).text_config
    h, kv, inter = text.hidden_size, text.num_key_value_heads * (text.hidden_size // text.num_attention_heads), \
        text.intermediate_size
    per_layer = 16 * ((h + h) * 2 + (h + kv) * 2 + (h + inter) * 2 + (inter + h))
    assert built.trainable == text.num_hidden_layers * per_layer == 134_217_728
    assert built.quantized and not any(".visual." in name for name in built.quantized)
    assert not any("lm_head" in name for name in built.quantized)
    assert any(".language_model.layers.0.mlp.down_proj" in name for name in built.quantized)
    cfg = AutoConfig.from_pretrained(str(ROOT / "configs/models/qwen2.5-vl-32b"))
    with torch.device("meta"):
        reference = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
    assert built.base_total == sum(p.numel() for p in reference.parameters())

    one = plan([recipe], gpus=1, gpu_memory=80)
    eight = plan([recipe], gpus=8, gpu_memory=80)
    assert one["recommended"] is not None and eight["recommended"] is not None
    assert eight["strategies"]["deepspeed_zero3"]["gib_per_gpu"] < one["strategies"]["deepspeed_zero3"]["gib_per_gpu"]
    assert eight["accumulation"]["accumulate_grad_batches"] == 2


@pytest.mark.slow
def test_explicit_skip_modules_follow_transformers_matching(tmp_path):
    # transformers 5 matches skip patterns from the start of the module name or as a suffix: "visual" does not
    # keep model.visual.* unquantized, and an explicit list drops the default lm_head skip.
    text = QWEN_VL_QLORA.replace("compute_dtype: bfloat16}", "compute_dtype: bfloat16, skip_modules: [visual]}")
    built = build_meta_model(read_recipe([_overlay(tmp_path, "qwen.yaml", text)]))
    assert any(".visual." in name for name in built.quantized)
    text = QWEN_VL_QLORA.replace("compute_dtype: bfloat16}",
                                 "compute_dtype: bfloat16, skip_modules: [model.visual, lm_head]}")
    built = build_meta_model(read_recipe([_overlay(tmp_path, "qwen2.yaml", text)]))
    assert not any(".visual." in name or "lm_head" in name for name in built.quantized)


# ----- the command line -----------------------------------------------------------------------------------
def test_text_output(capsys):
    main(["-c", EXAONE_LORA, "-c", DEBUG, "--gpus", "5"])  # global 24 / (micro 4 x 5) does not divide
    out = capsys.readouterr().out
    result = plan([EXAONE_LORA, DEBUG], gpus=5)
    assert result["params"]["peft_line"] in out
    assert result["accumulation"]["error"] in out  # the scaling rule's own message, unbroken
    for text in ("deepspeed_zero3_offload", "recommended: ddp", "world_size=5", "Exaone4ForCausalLM"):
        assert text in out
    main(["-c", EXAONE_LORA, "-c", DEBUG, "--gpus", "3"])
    assert "accumulate_grad_batches = 2" in capsys.readouterr().out


def test_json_output_has_every_part(capsys):
    main(["-c", KOMT_QLORA, "-c", DEBUG, "--gpus", "2", "--nodes", "2", "--gpu-memory", "24", "--json"])
    result = json.loads(capsys.readouterr().out)
    for key in ("model", "params", "bytes", "activations", "strategies", "recommended", "accumulation", "world",
                "batch", "precision", "gpu_memory_gib", "assumptions"):
        assert key in result
    assert result["world"] == {"gpus": 2, "nodes": 2, "world_size": 4}
    assert set(result["bytes"]) >= {"weights", "weights_by_dtype", "gradients", "optimizer", "activations"}
    assert "4bit" in result["bytes"]["weights_by_dtype"]
    for entry in result["strategies"].values():
        assert {"gib_per_gpu", "fits", "bytes", "notes"} <= set(entry)
    assert result["params"]["peft_line"].startswith("trainable params: ")


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ("tuneloop plan", "--gpus", "--nodes", "--gpu-memory", "--seq-len", "--json"):
        assert text in out


def test_unknown_recipe_is_a_clear_error():
    with pytest.raises(SystemExit) as e:
        main(["-c", "configs/nope/missing.yaml"])
    assert "recipe not found: configs/nope/missing.yaml" in str(e.value.code)


def test_recipe_without_arch_config_is_a_clear_error(tmp_path):
    text = (ROOT / BERT).read_text().replace("arch_config: configs/models/bert-base-uncased", "arch_config: null")
    with pytest.raises(PlanError, match="arch_config"):
        plan([_overlay(tmp_path, "r.yaml", text)])


def test_config_stacking_semantics(tmp_path):
    # The CLI's parser stacks the files (tests/trainer/test_plan_recipe.py: the same config as `tuneloop fit`).
    base = resolve_config([KOMT_LORA])["model"]
    assert base["init_args"]["lora"]["r"] == 32 and base["init_args"]["lora"]["alpha"] == 64

    # A null replaces; a nested mapping merges key by key.
    no_lora = _overlay(tmp_path, "no-lora.yaml", "model:\n  init_args:\n    lora: null\n")
    stacked = resolve_config([KOMT_LORA, no_lora])["model"]["init_args"]
    assert stacked["lora"] is None and stacked["backbone"] == base["init_args"]["backbone"]
    alpha = _overlay(tmp_path, "alpha.yaml", "model:\n  init_args:\n    lora: {alpha: 4}\n")
    assert resolve_config([KOMT_LORA, alpha])["model"]["init_args"]["lora"] == {**base["init_args"]["lora"],
                                                                                "alpha": 4}
    assert read_recipe([KOMT_LORA, no_lora]).lora is None and read_recipe([KOMT_LORA, alpha]).lora.alpha == 4

    # A changed class_path keeps the init_args the new class accepts (backbone, optimizer) and drops the others,
    # as `tuneloop fit` does.
    to_causal = _overlay(tmp_path, "causal.yaml", "model:\n  class_path: modules.causal_lm.CausalLMModule\n"
                                                  "  init_args:\n    max_new_tokens: 7\n")
    bert = resolve_config([BERT])["model"]["init_args"]
    switched = resolve_config([BERT, to_causal])["model"]
    assert switched["class_path"] == "modules.causal_lm.CausalLMModule"
    assert switched["init_args"]["max_new_tokens"] == 7
    assert switched["init_args"]["backbone"] == bert["backbone"]
    assert switched["init_args"]["optimizer"] == bert["optimizer"]
    assert "threshold" in bert and "threshold" not in switched["init_args"]  # EncoderModule's own argument


class RenamedVisionModule(VisionLanguageModule):
    """A task module under another name: the planner must follow what it declares, not its class name."""


def test_planner_asks_the_module_how_it_builds_its_model_not_its_class_name(tmp_path):
    recipe = "configs/vlm/qwen2.5-vl-32b-qlora.yaml"
    text = (ROOT / recipe).read_text(encoding="utf-8")
    assert "class_path: modules.vision_language.VisionLanguageModule" in text
    renamed = _overlay(tmp_path, "renamed.yaml", text.replace("modules.vision_language.VisionLanguageModule",
                                                              "tests.trainer.test_plan.RenamedVisionModule"))
    built = build_meta_model(read_recipe([renamed]))
    reference = build_meta_model(read_recipe([recipe]))
    assert (built.trainable, built.base_total) == (reference.trainable, reference.base_total) == \
        (134_217_728, reference.base_total)
    assert built.quantized and not any(".visual." in name for name in built.quantized)
    bad = _overlay(tmp_path, "bad.yaml", text.replace("VisionLanguageModule", "NoSuchModule"))
    # The CLI parser's own message: the class path and why it does not import.
    with pytest.raises(PlanError, match=r"(?s)'modules\.vision_language\.NoSuchModule'.*"
                                        r"has no attribute 'NoSuchModule'"):
        read_recipe([bad])
