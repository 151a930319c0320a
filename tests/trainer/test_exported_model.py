"""What a run reports is what it hands over: the exported adapter is the tested model, reloads with transformers +
peft alone in a fresh process (prompted through its ``prompt.json`` and a plain ``tokenizer(prompt)``) and
reproduces every row of ``predictions.jsonl``; a checkpoint restores the base it was trained on whatever the
seed; the README's snippet and the model card's (``adapter/README.md``) work as written, and the card reports the
test metrics of exactly the exported weights. (Encoders: ``test_encoder_export.py``.)

One debug fit of the intent recipe (CLI, as a user runs it) with a checkpoint monitor that keeps the first
epoch, so the tested checkpoint (step 3) and the final weights (step 6) are different models. The learning
rate is raised so that the adapter changes the generations within 6 steps.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

RECIPE = "configs/intent/exaone-4.0-1.2b-lora.yaml"
FIRST_EPOCH_IS_BEST = """\
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        monitor: val/loss
        mode: max          # the loss falls, so epoch 0 stays the "best": tested != final
        save_top_k: 1
        save_last: true
        filename: "best-{epoch}-{step}"
"""

# Only transformers and peft: how a user of the run's outputs reloads them, one utterance at a time.
RELOAD = r"""
import json, sys
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

run, adapter, test_file = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(f"{run}/{adapter}")
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(f"{run}/base_model"), f"{run}/{adapter}").eval()
prompt = json.load(open(f"{run}/{adapter}/prompt.json", encoding="utf-8"))
texts = {r["id"]: r["text"] for r in map(json.loads, open(test_file, encoding="utf-8"))}
out = {}
for line in open(f"{run}/predictions.jsonl", encoding="utf-8"):
    rid = json.loads(line)["id"]
    ids = tok(prompt["template"].format(text=texts[rid]), return_tensors="pt")
    gen = model.generate(**ids, **prompt["generation"])
    out[rid] = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
print("RESULT " + json.dumps(out, ensure_ascii=False))
"""


def _env():
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("TUNELOOP_RUN_VERSION", None)
    return env


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def intent_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    overlay = root / "first-epoch-best.yaml"
    overlay.write_text(FIRST_EPOCH_IS_BEST)
    _cli("fit", "-c", RECIPE, "-c", "configs/debug.yaml", "-c", str(overlay), f"--run.root={root}",
         "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.limit_test_batches=10",
         "--model.init_args.optimizer.init_args.lr=3e-2")
    (run,) = [p for p in root.glob("*/*") if p.is_dir()]
    return run


def _reload(run, adapter):
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(run), adapter, str(ROOT / "data/samples/intent/test.jsonl")],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def test_adapter_is_the_tested_checkpoint_and_reproduces_every_prediction(intent_run):
    metrics = json.loads((intent_run / "metrics.json").read_text())
    exports, tested = metrics["exports"], metrics["test"]["checkpoint"]
    assert exports["adapter"]["checkpoint"] == tested and re.search(r"best-epoch=0-step=3\.ckpt$", tested)
    assert (exports["adapter"]["global_step"], exports["adapter"]["epoch"]) == (3, 0)
    assert exports["adapter-last"]["global_step"] == metrics["fit"]["global_step"] == 6
    rows = _rows(intent_run / "predictions.jsonl")
    assert len(rows) == 40
    reloaded = _reload(intent_run, "adapter")
    assert [reloaded[r["id"]] for r in rows] == [r["generation"] for r in rows]  # 40 of 40
    # The final weights are another model: they do not give the reported predictions.
    last = _reload(intent_run, "adapter-last")
    assert sum(last[r["id"]] == r["generation"] for r in rows) < 20


def test_prompt_json_holds_the_prompt_and_generation_settings(intent_run):
    spec = json.loads((intent_run / "adapter" / "prompt.json").read_text(encoding="utf-8"))
    assert spec["format"] == "intent" and spec["fields"] == ["text"]
    assert spec["template"].endswith("Utterance: {text}\nIntent: ") and "날씨" in spec["template"]
    assert spec["labels"] == ["지식", "이미지생성", "3D", "4D", "날씨", "일정", "잡담", "기타"]
    assert spec["generation"] == {"do_sample": False, "max_new_tokens": 8}  # longest label (5 tokens + EOS) + 2


def test_tokenizer_of_the_export_does_not_end_a_prompt_with_eos(intent_run):
    from transformers import AutoTokenizer

    for name in ("adapter", "base_model"):
        tok = AutoTokenizer.from_pretrained(intent_run / name)
        ids = tok("Utterance: 내일 날씨 알려줘\nIntent: ").input_ids
        assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids


def test_checkpoint_reloads_its_saved_base_whatever_the_seed(intent_run):
    """``predict --ckpt_path`` with another seed: the module loads the run's base_model/, not a new random base."""
    ckpt = json.loads((intent_run / "metrics.json").read_text())["test"]["checkpoint"]
    _cli("predict", "-c", RECIPE, "-c", "configs/debug.yaml", f"--ckpt_path={ckpt}", "--seed_everything=7",
         "--trainer.logger=false", "--trainer.enable_progress_bar=false")
    predicted = _rows(intent_run / "predictions.predict.jsonl")
    tested = {r["id"]: r["generation"] for r in _rows(intent_run / "predictions.jsonl")}
    assert len(predicted) == 16  # limit_predict_batches 4 x micro batch 4
    assert [r["generation"] for r in predicted] == [tested[r["id"]] for r in predicted]


def test_readme_and_model_card_snippets_reproduce_a_test_prediction(intent_run):
    """The README's snippet and the one in ``adapter/README.md`` (the model card), as written, in one fresh process."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"<!-- reload-snippet -->\n```python\n(.*?)```", readme, re.S).group(1)
    card = re.search(r"```python\n(.*?)```", (intent_run / "adapter" / "README.md").read_text(encoding="utf-8"),
                     re.S).group(1)
    row = _rows(intent_run / "predictions.jsonl")[0]
    text = {r["id"]: r["text"] for r in _rows(ROOT / "data/samples/intent/test.jsonl")}[row["id"]]
    assert '"runs/intent-exaone-lora/<version>"' in code and '"내일 날씨 알려줘"' in code
    code = code.replace('"runs/intent-exaone-lora/<version>"', repr(str(intent_run))).replace(
        '"내일 날씨 알려줘"', repr(text))
    assert f'run = "{intent_run}"' in card and '"<utterance>"' in card
    code += "\n" + card.replace('"<utterance>"', repr(text))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout == row["generation"] + "\n" + row["generation"] + "\n"


def _shown(value) -> str:
    return "nan" if value is None else f"{value:.4f}"


def test_adapter_cards_describe_the_tested_weights(intent_run):
    metrics = json.loads((intent_run / "metrics.json").read_text())
    card = (intent_run / "adapter" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlibrary_name: peft\npipeline_tag: text-generation\n")
    for key, value in metrics["test"]["metrics"].items():
        assert f"| `{key}` | {_shown(value)} |" in card
    assert "best checkpoint by `val/loss`" in card and "global step 3, epoch 0" in card
    assert "| labels | `지식`, `이미지생성`, `3D`, `4D`, `날씨`, `일정`, `잡담`, `기타` |" in card
    assert "train `data/samples/intent/train.jsonl`" in card
    assert (intent_run / "config.yaml").read_text(encoding="utf-8").rstrip("\n") in card  # the recipe, verbatim
    last = (intent_run / "adapter-last" / "README.md").read_text(encoding="utf-8")
    assert "the final weights of the fit, global step 6" in last and "No test of these weights has run yet" in last


def test_vision_language_card_from_the_run_files(tmp_path):
    """A card is built from the run directory's files alone: a VLM adapter's (no fit needed), with the metrics of
    the evaluation of its own weights only (the post-fit test of the final weights, not a later checkpoint's)."""
    from trainer.model_card import refresh_cards

    run = tmp_path / "vlm-ppe" / "v1"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(
        "run: {experiment: vlm-ppe, version: v1}\n"
        "model: {class_path: modules.vision_language.VisionLanguageModule, init_args: {backbone: "
        "{name_or_path: Qwen/Qwen2.5-VL-32B-Instruct}, lora: {r: 16, alpha: 32}}}\n"
        "data: {init_args: {train_file: data/ppe/train.jsonl, test_file: data/ppe/test.jsonl, val_file: null}}\n")
    (run / "metrics.json").write_text(json.dumps({
        "fit": {"global_step": 5, "epochs": 1, "world_size": 1, "accumulate_grad_batches": 8},
        "exports": {"adapter": {"weights": "final", "global_step": 5}},
        "evaluations": {"test-final": {"name": "test-final", "checkpoint": None, "global_step": 5,
                                       "metrics": {"test/accuracy": 0.75, "test/unparseable": None}},
                        "test-last": {"name": "test-last", "checkpoint": str(run / "checkpoints/last.ckpt"),
                                      "global_step": 5, "metrics": {"test/accuracy": 0.5}}}}))
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"task_type": "CAUSAL_LM", "base_model_name_or_path": "Qwen/Qwen2.5-VL-32B-Instruct"}))
    (run / "adapter" / "prompt.json").write_text(json.dumps({"format": "chat", "fields": ["image", "messages"],
                                                            "system_prompt": "You check PPE."}))
    assert refresh_cards(run) == [run / "adapter" / "README.md"]
    card = (run / "adapter" / "README.md").read_text(encoding="utf-8")
    assert "base_model: Qwen/Qwen2.5-VL-32B-Instruct\npipeline_tag: image-text-to-text" in card
    assert "| `test/accuracy` | 0.7500 |" in card and "0.5000" not in card and "| `test/unparseable` | nan |" in card
    assert "train `data/ppe/train.jsonl`, test `data/ppe/test.jsonl` |" in card and "| adapter | r 16, alpha 32 |" in card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    compile(code, "card", "exec")
    assert "AutoModelForImageTextToText.from_pretrained(\"Qwen/Qwen2.5-VL-32B-Instruct\")" in code
    assert 'prompt["system_prompt"]' in code
