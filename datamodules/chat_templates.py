"""Chat templates ``data.chat_template`` can name, and reading one from a file.

A chat template (Jinja, as ``tokenizer.apply_chat_template`` renders it) turns a conversation into text. The
bundled ones end every assistant turn with its end-of-turn marker and put the separator before the next turn,
so the trained text of an answer is the answer and its end of turn, nothing after it:

``alpaca``   the Alpaca layout (MISSION §2's no-input prompt: preamble, ``### Instruction:``, ``### Response:``),
             answers closed by ``eos_token``; a system turn replaces the preamble.
``chatml``   ``<|im_start|>role\\n...<|im_end|>`` (Qwen and others; ``<|im_end|>`` is their EOS).
``llama-2``  ``<s>[INST] <<SYS>>...<</SYS>> user [/INST] answer </s>`` (Llama-2-chat, as Meta's reference code).
``exaone``   EXAONE 4.0 without reasoning or tools: ``[|role|]\\n...[|endofturn|]``, the assistant's answer after
             an empty ``<think>`` block (its generation prompt in non-reasoning mode).
"""

from __future__ import annotations

from pathlib import Path

ALPACA = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' %}"
    "{%- if loop.first %}{{ 'Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\\n\\n' }}{% endif %}"
    "{%- if not loop.first and messages[loop.index0 - 1]['role'] == 'assistant' %}{{ '\\n\\n' }}{% endif %}"
    "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

CHATML = (
    "{%- for message in messages %}"
    "{%- if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ ('\\n' if messages else '') + '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA_2 = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}"
    "{%- if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

EXAONE = (
    "{%- for message in messages %}"
    "{%- if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '[|' + message['role'] + '|]\\n' }}"
    "{%- if message['role'] == 'assistant' %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{{ message['content'] + '[|endofturn|]' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ ('\\n' if messages else '') + '[|assistant|]\\n<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
)

BUNDLED = {"alpaca": ALPACA, "chatml": CHATML, "llama-2": LLAMA_2, "exaone": EXAONE}


def resolve_chat_template(value: str | None) -> str | None:
    """The Jinja text of ``data.chat_template``: a bundled name (``alpaca``, ``chatml``, ``llama-2``, ``exaone``) or
    a UTF-8 file; ``None`` keeps the tokenizer's own. Raises ``ValueError`` (one line) for an unknown name, a
    missing file or a template Jinja cannot parse."""
    if value is None:
        return None
    if value in BUNDLED:
        text, where = BUNDLED[value], f"bundled template {value!r}"
    else:
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"data.chat_template {value!r} is neither a bundled template ({', '.join(BUNDLED)}) nor "
                             "a file")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"data.chat_template {value}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        where = f"data.chat_template {value}"
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{where}: line {e.lineno}: {e.message}") from None
    return text
