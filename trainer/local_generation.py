"""Greedy generation with a local Hugging Face model, one way for every caller: ``tuneloop compare generate``
and the local teachers of ``scripts/build_instructions.py`` (a causal LM) and
``scripts/build_feedback_instructions.py`` (a vision-language model). Also where an adapter's tokenizer is
(:func:`tokenizer_dir`, shared with ``tuneloop merge``).

torch, transformers and peft are imported inside the functions: importing this file costs nothing.
"""

from __future__ import annotations

from pathlib import Path


class LocalModelError(ValueError):
    """A local model or tokenizer cannot be used as asked; the message says why."""


def adapter_has_tokenizer(adapter_dir: str | Path) -> bool:
    """Whether a PEFT adapter directory carries its own tokenizer (an adapter trained with added tokens ships
    it): ``tokenizer_config.json``, which every tokenizer's ``save_pretrained`` writes, is there."""
    return (Path(adapter_dir) / "tokenizer_config.json").is_file()


def tokenizer_dir(base: str, adapter: str | None) -> str:
    """The directory to load the tokenizer of ``base`` (+ ``adapter``) from: the adapter's if it has one."""
    return adapter if adapter and adapter_has_tokenizer(adapter) else base


def copy_tokenizer(src: str, dst: str | Path, trust_remote_code: bool = False) -> None:
    """Load the tokenizer of ``src`` and save it to ``dst`` (every file it needs, whatever its kind)."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code).save_pretrained(str(dst))


def default_device() -> str:
    """``cuda`` when a CUDA device is available, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


HUB_PREFIX = "hf://"


def hub_model(base: str) -> tuple[str, str | None] | None:
    """``(model id, revision)`` of a Hub model named ``hf://owner/name[@revision]``, else ``None`` (a local
    directory). Loaded through ``from_pretrained``: the Hugging Face cache, or the Hub when online."""
    if not base.startswith(HUB_PREFIX):
        return None
    model_id, at, revision = base[len(HUB_PREFIX):].partition("@")
    if not model_id or (at and not revision):
        raise LocalModelError(f"{base!r}: expected hf://owner/name or hf://owner/name@revision")
    return model_id, revision or None


def load_causal_lm(base: str, device: str, dtype: str = "auto", adapter: str | None = None):
    """A causal LM (``AutoModelForCausalLM``, with its PEFT ``adapter`` if given) in eval mode on ``device``,
    and its tokenizer (:func:`tokenizer_dir`) set for batched generation: left padding, a pad token (the EOS
    when it has none).

    Args:
        base: Model directory, or a Hub model ``hf://owner/name[@revision]`` (:func:`hub_model`).
        device: ``cpu``, ``cuda``, ...
        dtype: ``auto`` (the checkpoint's), ``float32`` or ``bfloat16``.
        adapter: PEFT adapter directory, or None.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub = hub_model(base)
    revision = {}
    if hub is not None:
        base, rev = hub
        revision = {"revision": rev} if rev else {}
    tok_dir = tokenizer_dir(base, adapter)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, **(revision if tok_dir == base else {}))
    except OSError as e:
        if hub is None:
            raise
        raise LocalModelError(f"hf://{base}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    # Batched generation appends new tokens on the right, so prompts must end at the same position.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LocalModelError(f"tokenizer {tok_dir} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype, **revision)
    if adapter:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # peft 0.21 calls a property transformers 5 deprecates; not ours to fix
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model = PeftModel.from_pretrained(model, adapter)
    return model.eval().to(device), tokenizer


def encode_prompts(tokenizer, prompts: list[str]):
    """Left-padded ``input_ids`` and ``attention_mask``: (batch, longest prompt).

    The tokenizer's special tokens are added (e.g. BOS), except a trailing EOS that some post-processors
    append: it would tell the model that the text is over before the answer starts.
    """
    eos = tokenizer.eos_token_id
    ids = []
    for prompt in prompts:
        tokens = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if eos is not None and len(tokens) > 1 and tokens[-1] == eos:
            tokens = tokens[:-1]
        ids.append(tokens)
    return tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")


def generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int, device: str) -> list[str]:
    """Greedy answers to ``prompts`` (the prompt stripped, special tokens dropped, whitespace trimmed)."""
    from modules.generation import greedy_new_tokens

    batch = encode_prompts(tokenizer, prompts).to(device)
    new_tokens = greedy_new_tokens(model, batch, max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id,
                                   prefer_config_eos=True)
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
