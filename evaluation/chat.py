"""Chat records and which of their tokens are the assistant's: shared by local training and the evaluation, so a
loss means the same thing in both. No torch import: the tokenizer is passed in."""

from __future__ import annotations

import json
import os
from typing import Any

ROLES = ("system", "user", "assistant")


def load_conversations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The `messages` of each JSONL record (other columns dropped, as the pipeline does), each message reduced to
    role and content. Records the upstream validator would refuse are skipped rather than trusted."""
    rows = []
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)  # bytes: json detects UTF-8 (a line that is not raises ValueError)
            except (ValueError, RecursionError):  # the validator refuses such lines; never trusted here
                continue
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or len(messages) < 2:
                continue
            kept = [{"role": m["role"], "content": m["content"]} for m in messages
                    if isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)]
            if len(kept) == len(messages) and any(m["role"] == "assistant" for m in kept):
                rows.append({"messages": kept})
    return rows


def assistant_token_masks(tokenizer, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """`input_ids` of the rendered conversation and `assistant_masks` (1 on assistant tokens), for any chat
    template (markers or not): an assistant turn spans from the rendering of the turns before it (with the
    generation prompt) to the rendering that includes it."""

    def ids(turns: list[dict[str, str]], prompt: bool) -> list[int]:
        return list(tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=prompt,
                                                  return_dict=True)["input_ids"])

    input_ids = ids(messages, False)
    masks = [0] * len(input_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _common_prefix(ids(messages[:i], True), input_ids) if i else 0
        end = _common_prefix(ids(messages[: i + 1], False), input_ids)
        masks[start:end] = [1] * (end - start)
    return {"input_ids": input_ids, "assistant_masks": masks}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_and_reference(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str] | None:
    """The turns before the last assistant message, and that message (the reference answer); None without one."""
    for i in range(len(messages) - 1, 0, -1):
        if messages[i]["role"] == "assistant":
            return messages[:i], messages[i]["content"]
    return None
