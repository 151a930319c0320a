"""``tuneloop generate``: a run's exported adapter (a tiny random Llama, a LoRA adapter with perturbed B matrices,
the tokenizer and the ``prompt.json`` of the intent data) answers prompts from stdin and from JSONL exactly as
the module's greedy generation answers the same records rendered by the datamodule; a merged model with an
Alpaca layout too; answers stream to stdout and go to ``--out``; wrong prompts name file:line: field."""

from __future__ import annotations

import io
import json

import pytest

from tests.conftest import save_tiny_llama_with_adapter, write_jsonl
from trainer.generate import main

# peft 0.21 calls a property that transformers 5 deprecates (saving, merging): not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

LABELS = ["weather", "music", "alarm"]
UTTERANCES = ["내일 날씨 알려줘", "play some jazz", "wake me at seven"]
ALPACA = [{"id": "a1", "instruction": "Summarize.", "input": "R&D 기획은 수요조사에서 시작합니다."},
          {"id": "a2", "instruction": "Name a planning step."}]
MAX_NEW = 6


def _datamodule(fmt: str, test_file, tok):
    from datamodules.instruction import InstructionDataModule

    dm = InstructionDataModule(format=fmt, test_file=str(test_file), labels=LABELS if fmt == "intent" else None)
    dm.use_preprocessing(tok)
    return dm


def _module_greedy(model, tok, dm) -> dict:
    """What the causal-LM module generates for the test records: the datamodule's prompt ids, greedy_generate."""
    import torch

    from modules.generation import greedy_generate

    out = {}
    for row in dm._prepare("test", need_targets=False):
        ids = torch.tensor([row["prompt_ids"]])
        out[row["id"]] = greedy_generate(model, tok, ids, torch.ones_like(ids), MAX_NEW)[0]
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """runs/<exp>/<version>/ as a LoRA run leaves it: base_model/ (the tiny random base) and adapter/ (PEFT
    weights, tokenizer, prompt.json); merged/ (merge_and_unload); the module's expected answers."""
    root = tmp_path_factory.mktemp("gen-run")
    tok, model = save_tiny_llama_with_adapter(root, "base_model")
    intent_file = write_jsonl(root / "intent.jsonl", [{"id": f"u{i}", "text": t} for i, t in enumerate(UTTERANCES)])
    alpaca_file = write_jsonl(root / "alpaca.jsonl", ALPACA)
    intent, alpaca = _datamodule("intent", intent_file, tok), _datamodule("alpaca", alpaca_file, tok)
    spec = {**intent.prompt_spec(), "generation": {"do_sample": False, "max_new_tokens": MAX_NEW}}
    (root / "adapter" / "prompt.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (root / "alpaca-prompt.json").write_text(json.dumps(alpaca.prompt_spec()), encoding="utf-8")
    expected = {"intent": _module_greedy(model, tok, intent), "alpaca": _module_greedy(model, tok, alpaca)}
    model.merge_and_unload().save_pretrained(root / "merged")
    tok.save_pretrained(root / "merged")
    assert len(set(expected["intent"].values())) > 1  # the answers differ: a real comparison
    return root, expected


def test_adapter_from_stdin_streams_the_module_answers(run_dir, capsys, monkeypatch, tmp_path):
    root, expected = run_dir
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join([UTTERANCES[0], "", *UTTERANCES[1:]]) + "\n"))
    out = tmp_path / "answers.jsonl"
    main(["--adapter", str(root / "adapter"), "--device", "cpu", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3] and [r["text"] for r in rows] == UTTERANCES  # blank line skipped
    assert [r["generation"] for r in rows] == [expected["intent"][f"u{i}"] for i in range(3)]
    assert rows[0]["prompt"].endswith(f"Utterance: {UTTERANCES[0]}\nIntent: ") and "weather, music, alarm" in \
        rows[0]["prompt"]
    printed = capsys.readouterr().out
    for row in rows:  # each prompt, then its streamed answer
        assert f"> {row['text']}\n" in printed
        assert row["generation"].strip() in printed


def test_jsonl_prompts_and_merged_model_with_alpaca_layout(run_dir, tmp_path, capsys):
    root, expected = run_dir
    out = tmp_path / "a.jsonl"
    main(["--adapter", str(root / "adapter"), "--base", str(root / "base_model"), "--device", "cpu",
          "--prompts", str(root / "intent.jsonl"), "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {r["id"]: r["generation"] for r in rows} == expected["intent"]
    main(["--model", str(root / "merged"), "--prompt-json", str(root / "alpaca-prompt.json"), "--device", "cpu",
          "--prompts", str(root / "alpaca.jsonl"), "--max-new-tokens", str(MAX_NEW), "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {r["id"]: r["generation"] for r in rows} == expected["alpaca"]
    assert rows[1]["prompt"].startswith("Below is an instruction that describes a task. Write")  # no-input variant


def test_wrong_prompts_and_options(run_dir, tmp_path):
    root, _ = run_dir
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"utterance": "where is text?"}])
    for argv, problem in (
        (["--prompts", str(bad)], f"{bad}:2: field 'text': expected non-empty text, got nothing"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--base", str(root / "base_model"), "--model", str(root / "merged")], "--base goes with --adapter"),
    ):
        args = argv if "--model" in argv else ["--adapter", str(root / "adapter"), "--device", "cpu", *argv]
        with pytest.raises(SystemExit) as e:
            main(args)
        assert problem in e.value.code and "\n" not in e.value.code
    with pytest.raises(SystemExit) as e:
        main(["--adapter", str(tmp_path), "--device", "cpu"])
    assert "not a PEFT adapter directory (no adapter_config.json)" in e.value.code
