"""What a run reports is what it hands over: the exported adapter is the tested model, reloads with transformers +
peft alone in a fresh process (prompted through its ``prompt.json`` and a plain ``tokenizer(prompt)``) and
reproduces every row of ``predictions.jsonl``; a checkpoint restores the base it was trained on whatever the
seed; the README's snippet works as written.

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


def test_readme_snippet_reproduces_a_test_prediction(intent_run):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"<!-- reload-snippet -->\n```python\n(.*?)```", readme, re.S).group(1)
    row = _rows(intent_run / "predictions.jsonl")[0]
    text = {r["id"]: r["text"] for r in _rows(ROOT / "data/samples/intent/test.jsonl")}[row["id"]]
    assert '"runs/intent-exaone-lora/<version>"' in code and '"내일 날씨 알려줘"' in code
    code = code.replace('"runs/intent-exaone-lora/<version>"', repr(str(intent_run))).replace(
        '"내일 날씨 알려줘"', repr(text))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout == row["generation"] + "\n"
