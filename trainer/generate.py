"""``tuneloop generate``: a quick look at a tuned model without a config. Prompts from a file or stdin (one per
line) are answered by a run's exported adapter on its base, or by a merged model, and streamed to the terminal
token by token (transformers' ``TextStreamer``); ``--out`` also writes them as JSONL.

Prompts are laid out as the run trained them: ``prompt.json`` beside the adapter (or ``--prompt-json``) gives
the template (intent: ``text``; Alpaca: ``instruction`` + ``input``; chat: ``messages`` through the chat
template), tokenized as the run did (``tokenizer(prompt)``: BOS where the tokenizer adds one, never a trailing
EOS; a chat template writes its own BOS). Decoding is greedy with the tokenizer's EOS as the stop token, as the
module's own evaluation decodes (``modules.generation.greedy_generate``), so an answer here is the answer in
the run's ``predictions.jsonl``; ``--temperature`` > 0 samples instead.

torch, transformers and peft load inside :func:`run`: ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256
EXAMPLES = """examples:
  # the adapter a run exported (its base from adapter_config.json, or the debug run's base_model/ beside it)
  tuneloop generate --adapter runs/intent-exaone-lora/<version>/adapter --prompts utterances.txt
  echo "내일 날씨 알려줘" | tuneloop generate --adapter runs/intent-exaone-lora/<version>/adapter
  # a local copy of the base, answers also as JSONL
  tuneloop generate --adapter runs/sft-komt-lora/<version>/adapter --base /models/komt-llama2-13b \\
      --prompts questions.jsonl --out answers.jsonl --device cuda --dtype bfloat16
  # a merged model (tuneloop merge), laid out with the adapter's prompt.json
  tuneloop generate --model runs/sft-komt-lora/<version>/merged \\
      --prompt-json runs/sft-komt-lora/<version>/adapter/prompt.json --max-new-tokens 128

prompts: a .jsonl file holds one JSON object per line with the fields of the prompt layout (intent: text;
alpaca: instruction and optional input; chat: messages) or a ready "prompt" (sent as written), and an
optional id; any other file, or stdin (--prompts -, the default), holds one prompt per line (blank lines
are skipped), filled into the layout's first field (a chat: one user message)."""


class GenerateError(ValueError):
    """A wrong option or prompt; the message names what is wrong (and where: file:line)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop generate",
        description="Answer prompts with a fine-tuned model (a run's exported adapter on its base, or a merged\n"
        "model), streamed to the terminal; greedy by default, as the run's own evaluation decodes.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--adapter", metavar="DIR",
                      help="an adapter directory a run exported (runs/<experiment>/<version>/adapter: PEFT weights, "
                      "tokenizer, prompt.json)")
    what.add_argument("--model", metavar="DIR",
                      help="a merged model directory (tuneloop merge --out), or any causal LM: a local directory, "
                      "a Hub id or package:<module>/<dir>")
    parser.add_argument("--base", metavar="DIR",
                        help="with --adapter: the base model (default: adapter_config.json's base_model_name_or_path, "
                        "or the debug run's base_model/ beside the adapter)")
    parser.add_argument("--prompts", default="-", metavar="FILE",
                        help="a .jsonl file, a text file (one prompt per line) or - for stdin (default)")
    parser.add_argument("--prompt-json", metavar="FILE",
                        help="the prompt layout (default: prompt.json in the --adapter or --model directory; without "
                        "one, prompts are sent as written)")
    parser.add_argument("--raw", action="store_true", help="send every prompt as written, ignoring prompt.json")
    parser.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                        help="most tokens per answer (default: prompt.json's generation.max_new_tokens, else "
                        f"{DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (default): greedy; > 0: sample at this temperature")
    parser.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability mass (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling: random seed (default 0)")
    parser.add_argument("--out", metavar="FILE",
                        help="also write the answers as JSONL, one line per prompt as it is answered: id, the "
                        "prompt's fields, prompt (the text sent), generation")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the model runs (default auto: cuda when available)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="weight dtype (default auto: the checkpoint's)")
    return parser


# ----- prompt layout -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How a prompt record becomes the model's input text: ``prompt.json`` of the run (``spec``) or, with
    ``spec`` None, the prompt as written."""

    spec: dict | None

    @classmethod
    def load(cls, path: Path | None) -> "Layout":
        if path is None:
            return cls(None)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise GenerateError(f"prompt layout {path}: cannot be read as JSON ({e})") from None
        if not isinstance(spec, dict) or spec.get("format") not in ("intent", "alpaca", "chat"):
            raise GenerateError(f"prompt layout {path}: expected prompt.json of a tuneloop run (format intent, alpaca "
                                "or chat)")
        return cls(spec)

    @property
    def name(self) -> str:
        return self.spec["format"] if self.spec else "as written"

    @property
    def fields(self) -> list[str]:
        return list(self.spec["fields"]) if self.spec else ["prompt"]

    def record_of_line(self, line: str) -> dict:
        """A plain prompt line as a record: the layout's first field (a chat: one user message)."""
        if self.spec is None:
            return {"prompt": line}
        if self.spec["format"] == "chat":
            return {"messages": [{"role": "user", "content": line}]}
        return {self.fields[0]: line}

    def render(self, record: dict, tokenizer, where: str) -> tuple[str, bool]:
        """The prompt text of ``record`` and whether the tokenizer adds its special tokens (BOS) to it."""
        if "prompt" in record:  # ready text: sent as written
            return _text(record["prompt"], "prompt", where), True
        if self.spec is None:
            raise GenerateError(f"{where}: no 'prompt' field, and no prompt.json to lay out {sorted(record)}")
        fmt = self.spec["format"]
        if fmt == "chat":
            messages = record.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages):
                raise GenerateError(f"{where}: field 'messages': expected a list of {{role, content}} objects")
            text = tokenizer.apply_chat_template(messages, chat_template=self.spec.get("chat_template"),
                                                 tokenize=False, add_generation_prompt=True)
            return text, False  # the chat template writes its own BOS
        if fmt == "alpaca":
            instruction = _text(record.get("instruction"), "instruction", where)
            value = record.get("input") or ""
            if not isinstance(value, str):
                raise GenerateError(f"{where}: field 'input': expected text, got {type(value).__name__}")
            if value.strip():
                return self.spec["template"].format(instruction=instruction, input=value), True
            return self.spec["template_without_input"].format(instruction=instruction), True
        values = {f: _text(record.get(f), f, where) for f in self.fields}
        return self.spec["template"].format(**values), True


def _text(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        got = "nothing" if value is None else f"{type(value).__name__} {value!r}"
        raise GenerateError(f"{where}: field {field!r}: expected non-empty text, got {got}")
    return value


def layout_path(args: argparse.Namespace) -> Path | None:
    """``--prompt-json``, else ``prompt.json`` of the adapter or model directory, else None (``--raw``: None)."""
    if args.raw:
        return None
    if args.prompt_json:
        path = Path(args.prompt_json)
        if not path.is_file():
            raise GenerateError(f"--prompt-json {path}: no such file")
        return path
    found = Path(args.adapter or args.model) / "prompt.json"
    return found if found.is_file() else None


# ----- prompts -----------------------------------------------------------------------------------------------
def read_prompts(source: str, layout: Layout, stdin: Iterable[str]) -> Iterator[tuple[Any, dict, str]]:
    """``(id, record, where)`` of every prompt, read lazily (an interactive stdin is answered line by line).
    A ``.jsonl`` file holds records; any other source plain prompt lines. ``where`` is ``file:line``."""
    if source != "-" and Path(source).suffix.lower() == ".jsonl":
        from datamodules.records import json_objects

        for n, (lineno, obj) in enumerate(json_objects(source), start=1):
            yield obj.get("id", n), obj, f"{source}:{lineno}"
        return
    if source == "-":
        lines = ((i, line) for i, line in enumerate(stdin, start=1))
        name = "stdin"
    else:
        from datamodules.records import text_lines

        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts {source}: no such file")
        lines, name = text_lines(path), source
    n = 0
    for lineno, line in lines:
        line = line.rstrip("\r\n")
        if line.strip():
            n += 1
            yield n, layout.record_of_line(line), f"{name}:{lineno}"


# ----- model -------------------------------------------------------------------------------------------------
def adapter_base(adapter: Path) -> str:
    """The base model of an exported adapter: ``base_model_name_or_path`` of its ``adapter_config.json`` when that
    is a local directory, else a debug run's ``base_model/`` beside the adapter, else that name (a Hub id)."""
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise GenerateError(f"--adapter {adapter}: not a PEFT adapter directory (no adapter_config.json)")
    named = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    sibling = adapter.parent / "base_model"
    if named and Path(named).is_dir():
        return named
    if (sibling / "config.json").is_file():
        return str(sibling)
    if named:
        return named
    raise GenerateError(f"--adapter {adapter}: adapter_config.json names no base model; pass --base")


def generation_options(args: argparse.Namespace, layout: Layout, tokenizer) -> dict:
    """``generate`` keyword arguments: greedy (as ``modules.generation.greedy_new_tokens``: the tokenizer's pad and
    EOS) unless ``--temperature`` > 0."""
    run_settings = (layout.spec or {}).get("generation") or {}
    max_new = args.max_new_tokens or run_settings.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
    options: dict = {"max_new_tokens": int(max_new), "do_sample": False, "num_beams": 1}
    if args.temperature > 0:
        options.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    if tokenizer.pad_token_id is not None:
        options["pad_token_id"] = tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        options["eos_token_id"] = tokenizer.eos_token_id
    return options


def answer(model, tokenizer, prompt: str, special_tokens: bool, options: dict, streamer=None) -> str:
    """One prompt's continuation (special tokens dropped); streamed through ``streamer`` as it is generated."""
    import torch

    ids = tokenizer(prompt, add_special_tokens=special_tokens)["input_ids"]
    eos = tokenizer.eos_token_id
    if special_tokens and eos is not None and len(ids) > 1 and ids[-1] == eos:
        ids = ids[:-1]  # never an EOS after a prompt (some post-processors append one)
    input_ids = torch.tensor([ids], device=model.device)  # (1, prompt)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                             **options)
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)


def run(args: argparse.Namespace, stdin=None) -> list[dict]:
    """Answer every prompt (streamed to stdout); returns the answer records (also written to ``--out``)."""
    stdin = sys.stdin if stdin is None else stdin
    if args.base and not args.adapter:
        raise GenerateError("--base goes with --adapter (a merged --model is complete)")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise GenerateError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise GenerateError("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.adapter and not Path(args.adapter).is_dir():
        raise GenerateError(f"--adapter {args.adapter}: no such directory")
    layout = Layout.load(layout_path(args))
    import torch
    from transformers import TextStreamer

    from modules.backbone import resolve_path
    from trainer.local_generation import default_device, load_causal_lm
    from trainer.logs import ensure_logging, quiet_libraries

    ensure_logging()
    quiet_libraries()  # no weight-loading bar between the prompts and their answers (-v: back)

    device = default_device() if args.device == "auto" else args.device
    if args.adapter:
        base = resolve_path(args.base) if args.base else adapter_base(Path(args.adapter))
        model, tokenizer = load_causal_lm(base, device, args.dtype, adapter=args.adapter)
        what = f"{args.adapter} on {base}"
    else:
        model, tokenizer = load_causal_lm(resolve_path(args.model), device, args.dtype)
        what = args.model
    options = generation_options(args, layout, tokenizer)
    mode = "greedy" if not options["do_sample"] else f"sampling (temperature {args.temperature}, top-p {args.top_p})"
    log.info(f"generate: {what}, prompt layout {layout.name}, {mode}, at most {options['max_new_tokens']} new tokens")
    if options["do_sample"]:
        torch.manual_seed(args.seed)
    from datamodules.records import write_jsonl

    if args.out:
        write_jsonl(args.out, [])  # a fresh file, then one line per answer
    interactive = args.prompts == "-" and getattr(stdin, "isatty", lambda: False)()
    if interactive:
        log.info("generate: type a prompt and press Enter; Ctrl-D ends")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    rows = []
    for pid, record, where in read_prompts(args.prompts, layout, stdin):
        prompt, special = layout.render(record, tokenizer, where)
        if not interactive:  # a typed prompt is on the screen already
            print(f"> {_shown(record)}", flush=True)
        text = answer(model, tokenizer, prompt, special, options, streamer)
        row = {"id": pid, **{k: v for k, v in record.items() if k != "id"}, "prompt": prompt, "generation": text}
        rows.append(row)
        if args.out:
            write_jsonl(args.out, [row], append=True)
    if args.out:
        log.info(f"generate: {len(rows)} answers written to {args.out}")
    return rows


def _shown(record: dict, limit: int = 200) -> str:
    """The prompt as the terminal shows it above its answer: its main field, on one line."""
    value = record.get("prompt") or record.get("text") or record.get("instruction")
    if value is None and isinstance(record.get("messages"), list) and record["messages"]:
        value = record["messages"][-1].get("content")
    if value is None:
        value = next((v for v in record.values() if isinstance(v, str)), "")
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str]) -> None:
    """``tuneloop generate ...``; a wrong option or prompt stops with a one-line error."""
    from datamodules.records import RecordError
    from trainer.local_generation import LocalModelError

    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (GenerateError, RecordError, LocalModelError, FileNotFoundError) as e:
        raise SystemExit(f"tuneloop generate: {e}") from None
