"""The model card (``README.md``) of every exported model: ``<run>/model/``, ``<run>/adapter/``, ``adapter-last/``.

Built from what the run directory holds, so it never disagrees with it: the export's own files (``config.json``
with its labels and ``problem_type``, ``adapter_config.json``, ``prompt.json``), ``metrics.json`` (which
checkpoint and step the export holds; the test metrics of every evaluation of exactly those weights) and the
resolved ``config.yaml`` (the recipe, its data files). The callbacks write it with the export and again after
each test (:func:`refresh_cards`), so the card of the tested model carries its test metrics.

Kinds of export, told apart by their files: a sequence classifier (``config.json`` with a ``tuneloop`` entry),
a sequence-classification adapter (``adapter_config.json``, task type ``SEQ_CLS``), a vision-language adapter
(``prompt.json`` whose fields name an image) and a causal-LM adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

EXPORTS = ("model", "adapter", "adapter-last")

PIPELINE_TAGS = {"classifier": "text-classification", "seqcls-adapter": "text-classification",
                 "causal-adapter": "text-generation", "vlm-adapter": "image-text-to-text"}

# What the scores of the exported classifier mean, per encoder task.
SCORES = {
    "binary": "one score, P({pos}) (sigmoid); the prediction is {pos} when it is above {threshold}, else {neg}",
    "multiclass": "softmax probabilities over the classes; the prediction is the top class",
    "multilabel": "one sigmoid probability per label; a label is predicted when its score is above {threshold}",
    "regression": "the predicted values in original units (the training standardization is folded into the "
                  "output layer): one per target",
}
ACTIVATION = {"binary": "torch.sigmoid(logits)  # P({pos})", "multiclass": "logits.softmax(-1)",
              "multilabel": "torch.sigmoid(logits)", "regression": "logits  # values in original units"}


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _recipe(run: Path) -> tuple[str, dict]:
    import yaml

    path = run / "config.yaml"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return text, (yaml.safe_load(text) or {}) if text else {}


def _init_args(cfg: dict, key: str) -> dict:
    section = cfg.get(key) or {}
    return section.get("init_args") or {}


def export_kind(directory: Path) -> str:
    """``classifier``, ``seqcls-adapter``, ``vlm-adapter`` or ``causal-adapter`` (see the module docstring)."""
    if "tuneloop" in _json(directory / "config.json"):
        return "classifier"
    adapter = _json(directory / "adapter_config.json")
    if adapter.get("task_type") == "SEQ_CLS":
        return "seqcls-adapter"
    if "image" in (_json(directory / "prompt.json").get("fields") or []):
        return "vlm-adapter"
    return "causal-adapter"


def _evaluations_of(export: dict, metrics: dict) -> list[dict]:
    """The evaluations of exactly the exported weights: the checkpoint it was exported from, or (final weights)
    the post-fit test of the weights in memory (``test[-mode]-final``)."""
    found = []
    for entry in (metrics.get("evaluations") or {}).values():
        if export.get("weights") == "best":
            same = _same_file(export.get("checkpoint"), entry.get("checkpoint"))
        else:
            same = entry.get("checkpoint") is None and str(entry.get("name", "")).endswith("-final")
        if same:
            found.append(entry)
    return found


def _same_file(a: str | None, b: str | None) -> bool:
    """One checkpoint, however the command line named it (relative or absolute)."""
    return a is not None and b is not None and (a == b or os.path.realpath(a) == os.path.realpath(b))


def _fmt(value) -> str:
    if value is None:
        return "nan"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def build_card(run: Path, name: str) -> str:
    """The card of ``<run>/<name>/`` as Markdown with a Hugging Face metadata header."""
    directory = run / name
    kind = export_kind(directory)
    recipe_text, cfg = _recipe(run)
    model_args, data_args = _init_args(cfg, "model"), _init_args(cfg, "data")
    backbone = model_args.get("backbone") or {}
    metrics = _json(run / "metrics.json")
    export = (metrics.get("exports") or {}).get(name, {})
    classifier = _json(directory / "config.json") if kind == "classifier" else _json(run / "model" / "config.json")
    info = classifier.get("tuneloop") or {}
    prompt = _json(directory / "prompt.json")
    adapter_cfg = _json(directory / "adapter_config.json")
    base = adapter_cfg.get("base_model_name_or_path") or backbone.get("name_or_path") or "?"
    base_row = f"`{base}`"
    if backbone.get("tiny") and kind == "classifier":
        base_row = f"`{backbone.get('name_or_path')}` architecture, tiny and randomly initialised (debug overlay)"
    lora = model_args.get("lora")
    run_cfg = cfg.get("run") or {}
    title = f"{run_cfg.get('experiment', run.parent.name)} / {run_cfg.get('version', run.name)}: `{name}/`"

    lines = ["---", f"library_name: {'transformers' if kind == 'classifier' else 'peft'}"]
    hub_base = backbone.get("name_or_path")
    if hub_base and not backbone.get("tiny") and not str(hub_base).startswith("package:") and not Path(hub_base).exists():
        lines.append(f"base_model: {hub_base}")  # a Hub id (the Hub links the card to it)
    lines += [f"pipeline_tag: {PIPELINE_TAGS[kind]}", "tags:", "- tuneloop"]
    task = info.get("task") or data_args.get("task") or data_args.get("format")
    if task:
        lines.append(f"- {task}")
    lines += ["---", "", f"# {title}", ""]
    what = {"classifier": "Sequence classifier (`AutoModelForSequenceClassification`, `save_pretrained`)"
                          + (", the LoRA adapter merged into its base" if lora else ", fine-tuned in full"),
            "seqcls-adapter": "LoRA adapter (PEFT) of a sequence classifier, with its classification head",
            "causal-adapter": "LoRA adapter (PEFT) of a causal language model",
            "vlm-adapter": "LoRA adapter (PEFT) of a vision-language model"}[kind]
    lines += [f"{what}, trained with tuneloop.", ""]

    rows = [("base model", base_row)]
    if task:
        rows.append(("task", str(task)))
    labels = info.get("label_names") or prompt.get("labels")
    if labels:
        rows.append(("labels" if task != "regression" else "targets", ", ".join(f"`{x}`" for x in labels)))
    if info.get("task") in ("binary", "multilabel"):
        rows.append(("threshold", str(info.get("threshold"))))
    if lora:
        rows.append(("adapter", ", ".join(f"{k} {v}" for k, v in lora.items() if v is not None)))
    weights = export.get("weights")
    if weights == "best":
        score = export.get("score")
        rows.append(("weights", f"best checkpoint by `{export.get('monitor')}`"
                     + (f" ({score:.4f})" if isinstance(score, float) else "")
                     + f": `{Path(str(export.get('checkpoint'))).name}`, global step {export.get('global_step')}, "
                       f"epoch {export.get('epoch')}"))
    elif weights == "final":
        rows.append(("weights", f"the final weights of the fit, global step {export.get('global_step')}"))
    fit = metrics.get("fit") or {}
    if fit:
        epochs = fit.get("epochs")
        rows.append(("training", f"{fit.get('global_step')} optimizer steps over {epochs} epoch"
                                 f"{'' if epochs == 1 else 's'}, world size {fit.get('world_size')}, gradient "
                                 f"accumulation {fit.get('accumulate_grad_batches')}"))
    files = [f"{k[:-5]} `{v}`" for k, v in data_args.items() if k.endswith("_file") and v]
    if files:
        rows.append(("data", ", ".join(files)))
    if data_args.get("text_fields"):
        rows.append(("input text", _input_text(data_args)))
    if kind == "classifier":
        neg, pos = (labels + ["", ""])[:2] if labels else ("", "")
        rows.append(("scores", SCORES[info["task"]].format(pos=pos, neg=neg, threshold=info.get("threshold"))))
    lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]

    lines += ["## Test metrics", ""]
    evaluations = _evaluations_of(export, metrics) if export else []
    if evaluations:
        for entry in evaluations:
            lines += [f"Evaluation `{entry.get('name')}` (global step {entry.get('global_step')}):", "",
                      "| metric | value |", "|---|---|"]
            lines += [f"| `{k}` | {_fmt(v)} |" for k, v in sorted((entry.get("metrics") or {}).items())]
            lines.append("")
    else:
        lines += ["No test of these weights has run yet (`run.test_after_fit`, or `tuneloop test --ckpt_path ...`).", ""]

    lines += ["## How to load", "", "```python", *_snippet(kind, run, name, base, info, data_args, prompt), "```", ""]
    lines += ["## Recipe", "", "The resolved config of the run (`config.yaml`); "
              "`tuneloop fit -c config.yaml --run.version=<new version>` trains it again.", "",
              "```yaml", recipe_text.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def _input_text(data_args: dict) -> str:
    fields = data_args.get("text_fields") or []
    cut = f"; truncated to {data_args.get('max_length')} tokens" if data_args.get("max_length") else ""
    if len(fields) == 1:
        return f"the record's `{fields[0]}` field (a numeric field as `{fields[0]}: value`){cut}"
    return "the fields " + ", ".join(f"`{f}`" for f in fields) + f" joined as `name: value` lines{cut}"


def _snippet(kind: str, run: Path, name: str, base: str, info: dict, data_args: dict, prompt: dict) -> list[str]:
    run_s, cut = str(run), data_args.get("max_length")
    trunc = f", truncation=True, max_length={cut}" if cut else ""
    if kind == "classifier":
        labels = info.get("label_names") or ["", ""]
        activation = ACTIVATION[info["task"]].format(pos=labels[-1])
        return ["import torch",
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline", "",
                f'path = "{run_s}/{name}"',
                'clf = pipeline("text-classification", model=path, top_k=None)  # every label\'s score',
                f'print(clf("<input text>"{trunc}))', "",
                "tok = AutoTokenizer.from_pretrained(path)",
                "model = AutoModelForSequenceClassification.from_pretrained(path).eval()",
                "with torch.no_grad():",
                f'    logits = model(**tok(["<input text>"]{trunc}, return_tensors="pt")).logits',
                f"scores = {activation}"]
    if kind == "seqcls-adapter":
        return ["from peft import PeftModel",
                "from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer", "",
                f'run = "{run_s}"',
                'config = AutoConfig.from_pretrained(f"{run}/model")  # labels and problem_type of the merged model',
                f'base = AutoModelForSequenceClassification.from_pretrained("{base}", config=config)',
                f'model = PeftModel.from_pretrained(base, f"{{run}}/{name}").eval()  # merge_and_unload(): model/',
                f'tok = AutoTokenizer.from_pretrained(f"{{run}}/{name}")',
                f'logits = model(**tok(["<input text>"]{trunc}, return_tensors="pt")).logits  # as model/ gives them']
    head = ["import json", "from peft import PeftModel"]
    if kind == "vlm-adapter":
        return [*head, "from PIL import Image", "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
                f'run = "{run_s}"',
                f'processor = AutoProcessor.from_pretrained(f"{{run}}/{name}")',
                f'base = AutoModelForImageTextToText.from_pretrained("{base}")  # QLoRA: quantization_config=...',
                f'model = PeftModel.from_pretrained(base, f"{{run}}/{name}").eval()',
                f'prompt = json.load(open(f"{{run}}/{name}/prompt.json", encoding="utf-8"))',
                'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "<question>"}]}]',
                'if prompt.get("system_prompt"):',
                '    messages.insert(0, {"role": "system", "content": prompt["system_prompt"]})',
                "text = processor.apply_chat_template(messages, add_generation_prompt=True)",
                'inputs = processor(text=[text], images=[Image.open("<image.png>")], return_tensors="pt")',
                'out = model.generate(**inputs, **prompt["generation"])',
                'print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    fmt = prompt.get("format")
    if fmt == "intent":
        render = ['ids = tok(prompt["template"].format(text="<utterance>"), return_tensors="pt")']
    elif fmt == "alpaca":
        render = ['ids = tok(prompt["template_without_input"].format(instruction="<instruction>"), return_tensors="pt")',
                  '# with an input: prompt["template"].format(instruction=..., input=...)']
    else:
        render = ['ids = tok.apply_chat_template([{"role": "user", "content": "<question>"}], '
                  'chat_template=prompt.get("chat_template"),',
                  '                              add_generation_prompt=True, return_tensors="pt", return_dict=True)']
    return [*head, "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'run = "{run_s}"',
            f'tok = AutoTokenizer.from_pretrained(f"{{run}}/{name}")',
            f'base = AutoModelForCausalLM.from_pretrained("{base}")',
            f'model = PeftModel.from_pretrained(base, f"{{run}}/{name}").eval()  # .merge_and_unload() to deploy merged',
            f'prompt = json.load(open(f"{{run}}/{name}/prompt.json", encoding="utf-8"))',
            *render,
            'out = model.generate(**ids, **prompt["generation"])',
            'print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))']


def write_card(run: Path, name: str) -> Path | None:
    """Write ``<run>/<name>/README.md`` (atomically); ``None`` when the export directory does not exist."""
    from trainer.checkpoint_io import atomic_write_text

    directory = run / name
    if not directory.is_dir():
        return None
    path = directory / "README.md"
    atomic_write_text(path, build_card(run, name))
    return path


def refresh_cards(run: Path) -> list[Path]:
    """Rewrite the card of every export the run holds (after a test: its metrics join the card of its weights)."""
    exports = _json(run / "metrics.json").get("exports") or {}
    return [p for name in exports if name in EXPORTS and (p := write_card(run, name)) is not None]
