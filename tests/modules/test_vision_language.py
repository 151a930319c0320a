"""VisionLanguageModule on a tiny Qwen2.5-VL (random init, small vision tower, local tokenizer with the family's
special tokens): QLoRA with 4-bit language layers and a full-precision frozen vision tower, decreasing loss,
predictions with parsed alert decisions, adapter export that reloads to the same logits."""

import json
from functools import partial

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from datamodules.vision_instruction import VisionInstructionDataModule
from modules.backbone import BackboneSpec, LoraSpec, QuantSpec, TinySpec, apply_lora, build_model
from modules.vision_language import VisionLanguageModule, lora_target_regex, vision_prefixes, vision_quant
from tests.conftest import TOKENIZER, write_jsonl
from trainer.callbacks import AdapterExport, RunArtifacts
from modules.optim import SchedulerSpec
from datamodules.batch import BatchSpec

QUESTION = "Raise an alert if any worker is missing a helmet or a safety vest. End with Alert: True or Alert: False."


def backbone():
    return BackboneSpec(name_or_path="Qwen/Qwen2.5-VL-32B-Instruct", arch_config="configs/models/qwen2.5-vl-32b",
                        tokenizer=str(TOKENIZER), tiny=True, tiny_size=TinySpec(initializer_range=0.2))


def scene(path, alert: bool, shade: int):
    img = Image.new("RGB", (112, 112), (90 + shade, 140, 200))
    draw = ImageDraw.Draw(img)
    draw.rectangle([40, 40, 72, 100], fill=(255, 140, 0) if alert else (230, 230, 20))  # T-shirt vs vest
    if not alert:
        draw.rectangle([40, 60, 72, 64], fill=(235, 235, 235))  # reflective stripe
    img.save(path)
    return path.name


def write_data(tmp_path):
    rows = []
    for i in range(8):
        alert = i % 2 == 0
        answer = ("Orange T-shirt, no vest. Alert: True" if alert else "Vest with stripes. Alert: False")
        rows.append({"id": f"p{i}", "image": scene(tmp_path / f"p{i}.png", alert, 8 * i), "question": QUESTION,
                     "answer": answer, "alert": alert, "type": "A"})
    return str(write_jsonl(tmp_path / "ppe.jsonl", rows))


class EpochLosses(pl.Callback):
    def __init__(self):
        self.epochs, self._batch = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._batch.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(float(np.mean(self._batch)))
        self._batch = []


@pytest.fixture(scope="module")
def qlora_fit(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("vlm")
    path = write_data(tmp_path)
    pl.seed_everything(0)
    dm = VisionInstructionDataModule(train_file=path, val_file=path, test_file=path, batch=BatchSpec(4, 4),
                                     num_sample_generations=2, cache_dir=str(tmp_path / "cache"))
    # 32 new tokens: the longest answer is 27 tokens of the tiny tokenizer.
    module = VisionLanguageModule(backbone=backbone(), lora=LoraSpec(r=16, alpha=32, dropout=0.0),
                                  quant=QuantSpec(compute_dtype="float32"), max_new_tokens=32,
                                  optimizer=partial(torch.optim.AdamW, lr=5e-3, weight_decay=0.0),
                                  scheduler=SchedulerSpec("constant"))
    losses = EpochLosses()
    trainer = pl.Trainer(max_epochs=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
                         check_val_every_n_epoch=15, default_root_dir=str(tmp_path / "run"),
                         callbacks=[losses, RunArtifacts(), AdapterExport()])
    dm.use_preprocessing(module.tokenizer, module.processor)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm)
    return trainer, module, dm, losses, tmp_path


def test_qlora_quantizes_the_language_model_only_and_trains_adapters_only(qlora_fit):
    import bitsandbytes as bnb

    _, module, _, _, _ = qlora_fit
    model = module.model
    four_bit = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(".language_model." in n for n in four_bit)
    vision = [n for n, m in model.named_modules() if ".visual." in n and type(m) is torch.nn.Linear]
    assert vision, "the vision tower keeps ordinary full-precision linear layers"
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if ".visual." in n)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    head = model.get_output_embeddings()
    assert type(head) is torch.nn.Linear and not head.weight.requires_grad  # lm_head stays unquantized


def test_qlora_few_step_fit_decreases_the_loss(qlora_fit):
    _, _, _, losses, _ = qlora_fit
    assert len(losses.epochs) == 30
    assert losses.epochs[-1] < 0.1 * losses.epochs[0], losses.epochs
    assert losses.epochs[-1] < losses.epochs[10] < losses.epochs[5] < losses.epochs[0]


def test_the_answer_comes_from_the_image(qlora_fit):
    # Every record asks the same question; only the image (orange T-shirt vs striped vest) tells the answer.
    # After training, greedy answers parse to the right decision for every image: the image features reach
    # the language model through the frozen vision tower and the placeholder tokens.
    trainer, _, _, _, tmp_path = qlora_fit
    rows = [json.loads(l) for l in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["pred_alert"] for r in rows] == [r["target_alert"] for r in rows]
    assert float(trainer.callback_metrics["test/accuracy"]) == 1.0
    assert float(trainer.callback_metrics["test/unparseable"]) == 0.0


def test_test_run_writes_generations_predictions_and_alert_metrics(qlora_fit):
    trainer, _, _, _, tmp_path = qlora_fit
    run = tmp_path / "run"
    rows = [json.loads(l) for l in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["id"] for r in rows} == {f"p{i}" for i in range(8)}
    from modules.alerts import alert_summary, parse_alert

    for r in rows:
        assert set(r) >= {"generation", "pred_alert", "target_alert", "reference"}
        assert r["pred_alert"] == parse_alert(r["generation"])
    expected = alert_summary([r["target_alert"] for r in rows], [r["pred_alert"] for r in rows])
    logged = trainer.callback_metrics
    for key in ("accuracy", "precision", "recall", "f1", "false_positives", "false_negatives", "unparseable"):
        assert float(logged[f"test/{key}"]) == pytest.approx(expected[key]), key
    gens = [json.loads(l) for l in (run / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 4 and {g["epoch"] for g in gens} == {14, 29}  # 2 images x 2 validation epochs
    assert all("pred_alert" in g and g["target_alert"] in (True, False) for g in gens)
    assert (run / "plots" / "test_alert_confusion_matrix.png").exists()


def test_exported_adapter_reloads_on_the_4bit_base_with_the_same_logits(qlora_fit):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from modules.backbone import keep_trainable_4bit_layout

    _, module, dm, _, tmp_path = qlora_fit
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "preprocessor_config.json").exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "run" / "base_model")
    batch = dm.collate_fn([dm.splits["val"][i] for i in range(2)])
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    module.eval()
    with torch.no_grad():
        expected = module(batch)
    base = AutoModelForImageTextToText.from_pretrained(
        config["base_model_name_or_path"], quantization_config=vision_quant(QuantSpec(compute_dtype="float32")).to_bnb(),
        device_map={"": "cpu"}, dtype=torch.float32)
    # bitsandbytes' AVX512-BF16 CPU inference packing needs projections 32 wide or wider; the tiny model's k/v
    # are 16 (real models' sizes are multiples of 32), so keep the layout the module trained and tested with.
    keep_trainable_4bit_layout(base)
    reloaded = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        got = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                       mm_token_type_ids=batch["mm_token_type_ids"]).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_the_loss_applies_the_head_at_response_positions_only_and_equals_the_full_logits_loss(qlora_fit):
    from modules.token_loss import predicting_positions, token_nll

    _, module, dm, _, _ = qlora_fit
    batch = dm.collate_fn([dm.splits["val"][i] for i in range(2)])
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    positions = predicting_positions(batch["labels"])
    assert 0 < positions.numel() < batch["labels"].shape[1] - 1  # the prompt and image positions are skipped
    module.eval()  # no dropout: both passes compute the same function
    results = []
    for loss in (lambda: token_nll(module(batch), batch["labels"]), lambda: module.response_nll(batch)):
        module.zero_grad(set_to_none=True)
        nll, tokens = loss()
        nll.backward()
        results.append((nll.detach(), int(tokens),
                        {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}))
    module.zero_grad(set_to_none=True)  # the fitted module is shared with the other tests
    (full, n_full, g_full), (kept, n_kept, g_kept) = results
    assert n_full == n_kept > 0 and g_full.keys() == g_kept.keys() and g_full
    torch.testing.assert_close(kept, full, rtol=1e-6, atol=0.0)
    for name, g in g_kept.items():
        scale = float(g_full[name].abs().max())
        assert float((g - g_full[name]).abs().max()) <= 1e-5 * max(scale, 1e-12), name


@pytest.mark.parametrize("vision", ["frozen", "lora"])
def test_lora_targets_the_language_model_unless_the_vision_tower_is_adapted(vision):
    from modules.processor import load_vision_processor

    spec = backbone()
    proc, token_ids = load_vision_processor(spec)
    model = build_model(__import__("transformers").AutoModelForImageTextToText, spec, proc.tokenizer, **token_ids)
    assert vision_prefixes(model) == ["model.visual"]
    assert model.config.image_token_id == proc.image_token_id  # the tiny config points at the local tokenizer
    regex = lora_target_regex(model, include_vision=vision == "lora")
    peft_model = apply_lora(model, LoraSpec(r=4, target_modules=regex), task_type="CAUSAL_LM")
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    in_vision = {n for n in adapted if ".visual." in n}
    in_language = adapted - in_vision
    n_layers = model.config.text_config.num_hidden_layers
    assert len(in_language) == 7 * n_layers  # q, k, v, o, gate, up, down per decoder layer
    assert not any("lm_head" in n for n in adapted)
    if vision == "lora":
        assert in_vision and any(".merger." in n for n in in_vision)
    else:
        assert not in_vision


def test_vision_lora_needs_an_adapter_config():
    with pytest.raises(ValueError, match="model.vision=lora needs model.lora"):
        VisionLanguageModule(backbone=backbone(), lora=None, vision="lora")


@pytest.mark.slow
def test_recipe_with_debug_overlay_fits_predicts_and_compares_alerts(tmp_path, capsys):
    """The issue's path: fit the production recipe with the debug overlay (4-bit language layers on CPU) on the
    A-only and the A-D sets, predict with parsed decisions, then `tuneloop compare alerts` on the two runs."""
    from modules.alerts import alert_summary
    from trainer import compare
    from trainer.cli import TuneloopCLI

    recipe = "configs/vlm/qwen2.5-vl-32b-qlora.yaml"
    common = ["-c", recipe, "-c", "configs/debug.yaml", f"--run.root={tmp_path}", "--trainer.logger=false",
              "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1", "--trainer.limit_train_batches=4",
              "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=3", "--trainer.limit_predict_batches=2",
              "--model.init_args.max_new_tokens=12", "--data.init_args.num_sample_generations=1"]
    runs = {}
    for name, train in (("a_only", "train_a.jsonl"), ("a_to_d", "train_ad.jsonl")):
        cli = TuneloopCLI(args=["fit", *common, f"--run.version={name}",
                                f"--data.init_args.train_file=data/samples/ppe/{train}"])
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in cli.model.model.modules())
        runs[name] = tmp_path / "vlm-ppe-qlora" / name
    run = runs["a_to_d"]
    metrics = json.loads((run / "metrics.json").read_text())["test"]["metrics"]
    assert {"test/loss", "test/accuracy", "test/f1", "test/false_positives", "test/unparseable"} <= set(metrics)
    TuneloopCLI(args=["predict", *common, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    predicted = [json.loads(l) for l in (run / "predictions.predict.jsonl").read_text().splitlines()]
    assert len(predicted) == 2 and all("pred_alert" in r and isinstance(r["generation"], str) for r in predicted)
    assert all(r["target_alert"] in (True, False) for r in predicted)  # the test file is labelled

    capsys.readouterr()
    files = [str(runs[n] / "predictions.jsonl") for n in runs]
    compare.main(["alerts", "--predictions", *files, "--names", *runs, "--out", str(tmp_path / "cmp")])
    table = capsys.readouterr().out
    assert "a_only" in table and "a_to_d" in table and "unparseable" in table.lower()
    result = json.loads((tmp_path / "cmp" / "alerts.json").read_text())
    rows = [json.loads(l) for l in (runs["a_only"] / "predictions.jsonl").read_text().splitlines()]
    expected = alert_summary([r["target_alert"] for r in rows], [r["pred_alert"] for r in rows])
    got = result["models"]["a_only"]
    assert result["cases"] == got["n"] == 3
    for key in ("accuracy", "precision", "recall", "f1", "false_positives", "false_negatives", "unparseable"):
        assert got[key] == pytest.approx(expected[key]), key
