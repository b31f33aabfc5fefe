"""The ONE prompt-templating function: used by generation, log-probs and every gradient pass."""

from __future__ import annotations

from typing import Any

from cropi.data.schema import Messages


def with_system_prompt(messages: Messages, system_prompt: str | None) -> Messages:
    """A copy of ``messages`` with ``system_prompt`` prepended as a system message.

    Nothing is prepended when ``system_prompt`` is None or the first message is already a
    system message. The messages are copied (the caller's dicts are never shared).
    """
    msgs = [dict(m) for m in messages]
    if system_prompt is not None and (not msgs or msgs[0]["role"] != "system"):
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    return msgs


def prompt_token_ids(tokenizer: Any, messages: Messages, system_prompt: str | None = None) -> list[int]:
    """Token ids of ``messages`` under the chat template, ending with the assistant header.

    A tokenizer without a chat template gets the user contents joined by newlines.
    """
    msgs = with_system_prompt(messages, system_prompt)
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    text = "\n".join(m["content"] for m in msgs) + "\n"
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]
