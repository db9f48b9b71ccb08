"""Every rule about one parsed record: shape, roles, contents, structure (nesting depth, duplicate keys).

`examine_record` is the one function every record goes through: there is no separate fast path that could
disagree with it. It is written for speed (locals, one loop, lists touched only on a problem) because it runs
once per record of multi-GB uploads.
"""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant")
RECORD_KEYS = frozenset({"messages", "prompt", "prompt_id"})
MESSAGE_KEYS = frozenset({"role", "content"})
# Deepest nesting a record may have (the record object is level 1; a chat record needs 3, multimodal content
# parts 5). Deeper values are refused here because the tools after validation cannot take them: orjson.dumps
# (the split's hash, `chatft convert`) stops at 255 levels, Python's json at its recursion limit (~1000).
MAX_DEPTH = 64
_record_keys_ok = RECORD_KEYS.issuperset  # a third faster than keys() <= RECORD_KEYS
CONVERT = "; `chatft convert` turns it into chat JSONL"
# Role names of other formats, with what they are, for a message that says how to fix the file.
_FOREIGN_ROLES = {"human": "ShareGPT's", "gpt": "ShareGPT's", "bot": "a chat log's", "model": "Gemini's",
                  "chatgpt": "ShareGPT's", "ai": "a chat log's"}

# What the record tally of `examine_record` holds, in order: messages, system, user, assistant messages; system,
# user, assistant characters; estimated content tokens; estimated content tokens before the first assistant
# message; index of the first assistant message; object keys at every level (to see duplicates, which parsing drops).
Tally = tuple[int, int, int, int, int, int, int, int, int, int, int]


def examine_record(record: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]], Tally | None]:
    """Every rule about one parsed record, in one pass: its (code, message) errors, its warnings, and, when it has
    no error, its tally (see `Tally`). The estimate is `shared.tokens.estimate_tokens` of each content, inlined."""
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    if not _record_keys_ok(record):
        extra = [k for k in record if k not in RECORD_KEYS]
        warnings.append(("unexpected_key", f"record has key(s) {names(extra)} besides messages, prompt, "
                                           "prompt_id; training ignores them" + _did_you_mean(extra, RECORD_KEYS)))
        if depth_of(record) > MAX_DEPTH:
            errors.append(("too_deeply_nested", _too_deep(record)))
            return errors, warnings, None
    elif ((type(record.get("prompt_id")) not in _SCALARS or type(record.get("prompt")) not in _SCALARS)
          and depth_of(record) > MAX_DEPTH):
        errors.append(("too_deeply_nested", _too_deep(record)))
        return errors, warnings, None
    messages = record.get("messages")
    if type(messages) is not list:
        errors.append(("missing_messages", _missing_messages(record, messages)))
        return errors, warnings, None
    n = len(messages)
    if n < 2:
        errors.append(("too_few_messages", f"{n} message(s); at least 2 are needed"))
    ns = nu = na = cs = cu = ca = est = before = 0
    keys = len(record)
    if len(record) > 1 and (type(record.get("prompt")) not in _SCALARS or type(record.get("prompt_id")) not in _SCALARS
                            or not _record_keys_ok(record)):
        keys += sum(key_count(v) for k, v in record.items() if k != "messages")
    first_assistant = -1
    prev_turn: str | None = None  # the last non-system message's role (None: not a valid role)
    role: str | None = None
    alternating = True
    i = 0
    for message in messages:
        i += 1
        try:  # subscripts: cheaper than get() for the message that has both keys
            role = message["role"]
            content = message["content"]
        except KeyError:
            role = message.get("role")
            content = message.get("content")
        except TypeError:  # only an object (dict) is subscripted by a string
            if type(message) is list and depth_of(message) > MAX_DEPTH - 2:
                errors.append(("too_deeply_nested", _too_deep(record)))
                return errors, warnings, None
            errors.append(("message_not_object", f"message {i} is {kind(message)}, expected an object"))
            role = prev_turn = None
            continue
        keys += len(message)
        size = len(content) if type(content) is str and content and not content.isspace() else -1
        # The roles users and assistants use most come first: the common record costs two comparisons a message.
        # A bad content (size -1) is counted too: it is an error, and a record with an error has no tally.
        if role == "assistant":
            if prev_turn == "assistant" and alternating:
                warnings.append(("roles_not_alternating", "two assistant messages in a row"))
                alternating = False
            prev_turn = role
            if first_assistant < 0:
                first_assistant, before = i - 1, est
            na += 1
            ca += size
        elif role == "user":
            if prev_turn == "user" and alternating:
                warnings.append(("roles_not_alternating", "two user messages in a row"))
                alternating = False
            prev_turn = role
            nu += 1
            cu += size
        elif role == "system":
            if i > 1:
                errors.append(("system_not_first", f"message {i} is a system message; only the first may be"))
            ns += 1
            cs += size
        elif role is None:
            errors.append(("missing_role", (f"message {i} has no role" + _did_you_mean(message, ("role",)))
                           if "role" not in message else f"message {i} role is null"))
            prev_turn = None
        else:
            if type(role) in (list, dict) and depth_of(role) > MAX_DEPTH - 3:
                errors.append(("too_deeply_nested", _too_deep(record)))
                return errors, warnings, None
            errors.append(("unrecognized_role", _unrecognized_role(i, role)))
            role = prev_turn = None
        est += (size + 3) >> 2  # estimate_tokens(content): ceil(characters / 4)
        if size < 0:
            if content is None:
                errors.append(("missing_content", (f"message {i} has no content"
                                                   + _did_you_mean(message, ("content",)))
                               if "content" not in message else f"message {i} content is null"))
            elif type(content) is str:
                errors.append(("empty_content", f"message {i} content is "
                               + ("an empty string" if not content else "only whitespace")))
            else:
                if type(content) in (list, dict) and depth_of(content) > MAX_DEPTH - 3:
                    errors.append(("too_deeply_nested", _too_deep(record)))
                    return errors, warnings, None
                errors.append(("content_not_string", _content_not_string(i, content)))
        # Two keys, both present, are exactly role and content; anything else may hold keys training ignores.
        if len(message) != 2 or role is None or content is None:
            extra = [k for k in message if k not in MESSAGE_KEYS]
            if extra:
                if depth_of(message) > MAX_DEPTH - 2:
                    errors.append(("too_deeply_nested", _too_deep(record)))
                    return errors, warnings, None
                warnings.append(("unexpected_key", f"message {i} has key(s) {names(extra)} besides role, "
                                                   "content" + _did_you_mean(extra, MESSAGE_KEYS)))
                keys += sum(key_count(message[k]) for k in extra)
    if n and first_assistant < 0:
        errors.append(("no_assistant_message", "no assistant message: training learns only from assistant "
                                               "messages"))
    if role == "user":
        warnings.append(("trailing_user_message", "last message is from the user; it is not trained on"))
    if errors:
        return errors, warnings, None
    return errors, warnings, (n, ns, nu, na, cs, cu, ca, est, before, first_assistant, keys)


_SCALARS = (str, int, float, bool, type(None))


def depth_of(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply `value` nests (a scalar is 0, `[]` is 1), counted without recursion and no further than
    `limit + 1` (enough to say it is too deep)."""
    if type(value) not in (list, dict):
        return 0
    deepest, stack = 1, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        for child in (node.values() if type(node) is dict else node):
            if type(child) in (list, dict):
                stack.append((child, level + 1))
    return deepest


def _too_deep(record: Any) -> str:
    return (f"the record nests more than {MAX_DEPTH} levels deep (arrays or objects inside each other); training "
            "tools cannot read it")


def duplicate_key(line: bytes) -> str | None:
    """The path and name of the first key that appears twice in one object of the JSON `line` (as
    `messages[1].content`), or None. orjson keeps the last value silently; `datasets.load_dataset("json")`
    (pyarrow's JSON reader) refuses the line ("Column(/messages/[]/content) was specified twice")."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen and not found:
                found.append(key)
            seen[key] = value
        return seen

    try:
        json.loads(line, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    if not found:
        return None
    return found[0]


def key_count(value: Any) -> int:
    """How many object keys a parsed JSON value holds at every level, counted without recursion."""
    count, stack = 0, [value]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            count += len(node)
            stack.extend(c for c in node.values() if type(c) in (list, dict))
        elif type(node) is list:
            stack.extend(c for c in node if type(c) in (list, dict))
    return count


def kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def show(value: Any) -> str:
    shown = repr(value) if isinstance(value, str) else kind(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def names(keys: list[str]) -> str:
    shown = ", ".join(show(k) for k in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _did_you_mean(keys: Any, wanted: Any) -> str:
    """" (did you mean 'messages'?)" for keys that differ from an expected key only in case or spaces."""
    for key in keys:
        if type(key) is str and key not in wanted:
            plain = key.strip().lower()
            for want in wanted:
                if plain == want:
                    return f" (did you mean {want!r}? keys are case-sensitive)"
    return ""


def _missing_messages(record: dict[str, Any], messages: Any) -> str:
    if "messages" in record:
        return f"'messages' is {kind(messages)}, expected an array of messages"
    keys = record.keys()
    hint = _did_you_mean(keys, ("messages",))
    if hint:
        return "no 'messages' key" + hint
    for fields, name in (({"conversations"}, "a ShareGPT record"), ({"instruction", "output"}, "an Alpaca record"),
                         ({"prompt", "completion"}, "a legacy prompt/completion record")):
        if fields <= keys:
            return f"no 'messages' key: this is {name}" + CONVERT
    return "no 'messages' key"


def _content_not_string(i: int, content: Any) -> str:
    if type(content) is list:
        return (f"message {i} content is an array (of parts, the multimodal shape?); chat fine-tuning takes a "
                f"string" + CONVERT + " (it joins text parts)")
    return f"message {i} content is {kind(content)}, expected a non-empty string"


def _unrecognized_role(i: int, role: Any) -> str:
    text = f"message {i} has role {show(role)}; expected system, user or assistant"
    if type(role) is str:
        plain = role.strip().lower()
        if plain in ROLES:
            return text + " (lower-case, no spaces)"
        if plain in _FOREIGN_ROLES:
            return text + f" ({_FOREIGN_ROLES[plain]} role name" + CONVERT + ")"
        if plain in ("tool", "function", "developer", "ipython"):
            return text + " (chat fine-tuning here trains on system, user and assistant turns only)"
    return text
