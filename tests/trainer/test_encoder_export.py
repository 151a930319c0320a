"""Every encoder run leaves a loadable model: ``<run>/model/`` (and a LoRA run's ``adapter/``) reloads in a fresh
process with transformers (and peft) alone, through ``AutoModelForSequenceClassification``, through
``transformers.pipeline("text-classification")`` and through the snippets of its model card, and gives the
predictions of the run's test (``predictions.jsonl``) and of ``tuneloop predict``.

Three debug fits in this process, as a user runs them (the CLI), 2 epochs of one optimizer step each, with a
checkpoint monitor that keeps the first step: the tested and exported weights (step 1) are not the final ones
(step 2). Multi-label (full fine-tuning), regression with two targets (LoRA: the standardization is folded into
the output layer of the merged model and of the adapter) and binary (full fine-tuning, W&B offline with
``run.log_artifacts=true``: ``test_wandb_artifacts.py`` reads its W&B run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import ROOT

DEBUG = "configs/debug.yaml"
FIRST_STEP_IS_BEST = """\
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: step, mode: min, save_top_k: 1, save_last: true, filename: "best-{epoch}-{step}"}
"""
SMALL = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
         "--trainer.limit_test_batches=1", "--trainer.limit_predict_batches=1", "--trainer.enable_progress_bar=false",
         "--model.init_args.scheduler.name=constant", "--model.init_args.optimizer.init_args.lr=1e-3",
         "--data.init_args.max_length=64"]
LORA = ["--model.init_args.lora={r: 4, alpha: 8, dropout: 0.0}"]
CASES = {  # run version: (recipe, experiment, extra arguments)
    "multilabel": ("configs/encoder/waam-multilabel.yaml", "waam-multilabel", ["--trainer.logger=false"]),
    "regression": ("configs/encoder/waam-multitarget.yaml", "waam-multitarget", ["--trainer.logger=false", *LORA]),
    "binary": ("configs/encoder/breast-cancer-binary.yaml", "breast-cancer-binary",
               ["--run.log_artifacts=true", "--run.tags=[smoke, encoder]"]),
}

# Only transformers (and peft, for the adapter card): how a user of the run's outputs reloads them.
RELOAD = r"""
import json, os, re, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

def card_code(path):
    return re.search(r"```python\n(.*?)```", open(path, encoding="utf-8").read(), re.S).group(1)

out = {}
for run, test_file, max_length in json.loads(sys.argv[1]):
    texts = {r["id"]: r["text"] for r in map(json.loads, open(test_file, encoding="utf-8"))}
    ids = [json.loads(line)["id"] for line in open(f"{run}/predictions.jsonl", encoding="utf-8")]
    batch = [texts[i] for i in ids]
    path = f"{run}/model"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        logits = model(**tok(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")).logits
    clf = pipeline("text-classification", model=path, top_k=None)
    piped = [{d["label"]: d["score"] for d in r} for r in clf(batch, truncation=True, max_length=max_length)]
    result = {"ids": ids, "logits": logits.tolist(), "pipeline": piped}
    ns = {}  # the model card's snippet as written, on the first record
    exec(card_code(f"{path}/README.md").replace('"<input text>"', repr(batch[0])), ns)
    result["card"] = ns["scores"].tolist()
    if os.path.isdir(f"{run}/adapter"):
        ns = {}
        exec(card_code(f"{run}/adapter/README.md").replace('"<input text>"', repr(batch[0])), ns)
        result["card_adapter"] = ns["logits"].tolist()
    out[run] = result
print("RESULT " + json.dumps(out))
"""


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def fit_encoder_runs(tmp_path_factory) -> dict:
    """``{case: run directory}`` of the three fits; the regression run also ran ``tuneloop predict``. Once per test
    session: ``test_wandb_artifacts.py`` uses them too, and a finished set is marked on disk (``done``)."""
    import wandb

    from trainer.cli import TuneloopCLI

    root = tmp_path_factory.getbasetemp() / "encoder-export"
    runs = {case: root / experiment / case for case, (_, experiment, _) in CASES.items()}
    if (root / "done").exists():
        return runs
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    overlay = root / "first-step-is-best.yaml"
    overlay.write_text(FIRST_STEP_IS_BEST)
    saved = {k: os.environ.get(k) for k in ("WANDB_DATA_DIR", "TUNELOOP_RUN_VERSION")}
    os.environ["WANDB_DATA_DIR"] = str(root / "wandb-data")  # W&B stages artifact files here
    try:
        for case, (recipe, _, extra) in CASES.items():
            base = ["-c", recipe, "-c", DEBUG, "-c", str(overlay), f"--run.root={root}", *SMALL, *extra]
            TuneloopCLI(args=["fit", *base, f"--run.version={case}"])
            if case == "regression":
                best = json.loads((runs[case] / "metrics.json").read_text())["exports"]["model"]["checkpoint"]
                TuneloopCLI(args=["predict", *base, f"--ckpt_path={best}"])
        wandb.finish()  # the binary run's W&B run ends (its writer flushes the log shortly after)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    (root / "done").write_text("")
    return runs


@pytest.fixture(scope="session")
def encoder_runs(tmp_path_factory):
    return fit_encoder_runs(tmp_path_factory)


@pytest.fixture(scope="session")
def reloaded(encoder_runs):
    """What the fresh process computed, per case."""
    spec = []
    for run in encoder_runs.values():
        data = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]
        spec.append([str(run), str(ROOT / data["test_file"]), data["max_length"]])
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(spec)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    return {case: out[str(run)] for case, run in encoder_runs.items()}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@pytest.mark.slow
def test_multilabel_model_gives_the_tested_probabilities(encoder_runs, reloaded):
    run, got = encoder_runs["multilabel"], reloaded["multilabel"]
    rows = _rows(run / "predictions.jsonl")
    labels = ["porosity", "lack_of_fusion", "humping", "cracking", "spatter", "undercut"]
    assert len(rows) == 16 and got["ids"] == [r["id"] for r in rows]
    expected = np.array([[r["probs"][n] for n in labels] for r in rows])  # rounded to 6 decimals
    assert expected.std() > 1e-3  # a trained model, not a constant
    np.testing.assert_allclose(_sigmoid(got["logits"]), expected, atol=1e-5)
    np.testing.assert_allclose([[p[n] for n in labels] for p in got["pipeline"]], expected, atol=1e-5)
    np.testing.assert_allclose(got["card"], expected[:1], atol=1e-5)
    assert [[n for n in labels if p[n] > 0.5] for p in got["pipeline"]] == [r["pred"] for r in rows]


@pytest.mark.slow
def test_regression_model_and_adapter_predict_in_original_units(encoder_runs, reloaded):
    run, got = encoder_runs["regression"], reloaded["regression"]
    targets = ["heat_input_j_mm", "energy_j"]
    rows = _rows(run / "predictions.jsonl")
    expected = np.array([[r["pred"][t] for t in targets] for r in rows])
    assert expected[:, 1].mean() > 1e4  # joules, not standardized values
    # Compared in the model's own (standardized) units: |difference| / std below 1e-5, as for the classifiers.
    best = json.loads((run / "metrics.json").read_text())["exports"]["model"]["checkpoint"]
    std = torch.load(best, weights_only=True)["state_dict"]["head.target_std"].numpy()

    def close(actual, desired):
        np.testing.assert_allclose(np.asarray(actual) / std, np.asarray(desired) / std, rtol=0, atol=1e-5)

    close(got["logits"], expected)
    close([[p[t] for t in targets] for p in got["pipeline"]], expected)
    close(got["card"], expected[:1])
    close(got["card_adapter"], expected[:1])  # base + adapter, unmerged
    # tuneloop predict (the best checkpoint through the CLI) gives the exported model's values too.
    predicted = _rows(run / "predictions.predict.jsonl")
    by_id = dict(zip(got["ids"], got["logits"]))
    assert len(predicted) == 16
    close([by_id[r["id"]] for r in predicted], [[r["pred"][t] for t in targets] for r in predicted])


@pytest.mark.slow
def test_binary_model_gives_p_positive(encoder_runs, reloaded):
    run, got = encoder_runs["binary"], reloaded["binary"]
    rows = _rows(run / "predictions.jsonl")
    expected = np.array([r["prob"] for r in rows])
    np.testing.assert_allclose(_sigmoid(got["logits"])[:, 0], expected, atol=1e-5)
    np.testing.assert_allclose(np.array(got["card"])[:, 0], expected[:1], atol=1e-5)  # the card's sigmoid
    assert all(set(p) == {"malignant"} for p in got["pipeline"])  # one score: P(malignant)
    np.testing.assert_allclose([p["malignant"] for p in got["pipeline"]], expected, atol=1e-5)
    assert [("malignant" if p["malignant"] > 0.5 else "benign") for p in got["pipeline"]] == [r["pred"] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("case,problem_type,id2label", [
    ("multilabel", "multi_label_classification",
     ["porosity", "lack_of_fusion", "humping", "cracking", "spatter", "undercut"]),
    ("regression", "regression", ["heat_input_j_mm", "energy_j"]),
    ("binary", "multi_label_classification", ["malignant"]),
])
def test_exports_are_the_tested_checkpoint(encoder_runs, case, problem_type, id2label):
    run = encoder_runs[case]
    metrics = json.loads((run / "metrics.json").read_text())
    exports = metrics["exports"]
    assert metrics["fit"]["global_step"] == 2
    assert exports["model"]["weights"] == "best" and exports["model"]["global_step"] == 1
    assert exports["model"]["checkpoint"] == metrics["test"]["checkpoint"]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["problem_type"] == problem_type and config["architectures"] == ["BertForSequenceClassification"]
    assert list(config["id2label"].values()) == id2label and config["label2id"] == {n: i for i, n in enumerate(id2label)}
    assert config["tuneloop"]["task"] == case
    lora = case == "regression"
    assert (run / "adapter").is_dir() == (run / "adapter-last").is_dir() == (run / "base_model").is_dir() == lora
    assert not (run / "model-last").exists()
    if lora:  # the adapter is the tested checkpoint too; the final weights are kept beside it
        assert exports["adapter"] == exports["model"] and exports["adapter-last"]["global_step"] == 2
        ckpt = torch.load(exports["model"]["checkpoint"], weights_only=True)
        assert ckpt["tuneloop"] == {"adapter_only": True, "task": "regression", "label_names": id2label}
        assert all("lora_" in k or "classifier" in k for k in ckpt["state_dict"] if k.startswith("model."))


@pytest.mark.slow
def test_model_card_holds_the_test_metrics_recipe_and_data(encoder_runs):
    run = encoder_runs["regression"]
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("model", "adapter"):
        card = (run / name / "README.md").read_text(encoding="utf-8")
        assert card.startswith("---\nlibrary_name: " + ("transformers" if name == "model" else "peft"))
        for key, value in metrics["test"]["metrics"].items():
            assert f"| `{key}` | {value:.4f} |" in card
        assert "data/samples/waam/train.jsonl" in card and "| targets | `heat_input_j_mm`, `energy_j` |" in card
        assert (run / "config.yaml").read_text(encoding="utf-8").rstrip("\n") in card  # the recipe, verbatim
        assert "global step 1, epoch 0" in card
    # The final weights were never tested: their card says so.
    assert "No test of these weights has run yet" in (run / "adapter-last" / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("arch,layer", [("bert-base-uncased", "classifier"), ("roberta-base", "classifier.out_proj")])
def test_folding_finds_the_output_layer_of_each_family(tokenizer, arch, layer):
    """``W' = diag(std) W``, ``b' = std b + mean`` on the family's output layer gives ``std * out + mean``, also
    through a LoRA model's state dict (PEFT's copies of the head)."""
    from transformers import AutoModelForSequenceClassification

    from modules.backbone import BackboneSpec, LoraSpec, apply_lora, build_model
    from modules.encoder import fold_affine, output_layer_name, plain_name

    spec = BackboneSpec(name_or_path=arch, arch_config=f"configs/models/{arch}", tokenizer="data/tokenizers/tiny-bpe",
                        tiny=True)
    torch.manual_seed(0)
    model = build_model(AutoModelForSequenceClassification, spec, tokenizer, num_labels=2).eval()
    assert output_layer_name(model, 2) == layer
    scale, shift = torch.tensor([200.0, 3e4]), torch.tensor([650.0, 1e5])
    probe = tokenizer(["current 150 A", "voltage 22 V"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**probe).logits
        out = model.get_submodule(layer)
        out.weight.data, out.bias.data = fold_affine(out.weight.data, out.bias.data, scale, shift)
        after = model(**probe).logits
    torch.testing.assert_close(after, before * scale + shift, rtol=1e-5, atol=1e-2)
    peft = apply_lora(model, LoraSpec(r=2), "SEQ_CLS")
    copies = [n for n, m in peft.named_modules() if isinstance(m, torch.nn.Linear) and plain_name(n) == layer]
    assert sorted(copies) == [f"base_model.model.classifier.{kind}{layer[len('classifier'):]}"
                              for kind in ("modules_to_save.default", "original_module")]
