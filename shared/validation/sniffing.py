"""File sniffing and hints: faults of the whole file found from its first bytes, and plain words for a line that
is not JSON (trailing commas, lone carriage returns, NUL bytes, NaN literals, Python dicts, two records on a line).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from .records import CONVERT, show

HEAD_BYTES = 1 << 16  # how much of the file's start is looked at for file-level faults
HEAD_LINES = 20  # and how many of its non-blank lines at most
BOM = b"\xef\xbb\xbf"
ORJSON_MAX_DEPTH = 1024  # orjson.loads refuses deeper nesting ("recursion limit")


# Byte order marks, longest first (UTF-32 LE starts with UTF-16 LE's).
_UNICODE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32 LE"), (b"\x00\x00\xfe\xff", "UTF-32 BE"),
                 (b"\xff\xfe", "UTF-16 LE"), (b"\xfe\xff", "UTF-16 BE"))
# Leading bytes of binary formats people upload by mistake: (magic, what it is, what to do).
_MAGIC = ((b"\x1f\x8b", "a gzip-compressed file", "decompress it first (gunzip)"),
          (b"PK\x03\x04", "a ZIP archive (or an .xlsx/.docx, which are ZIP archives)",
           "extract the JSONL file from it; a spreadsheet must be exported to chat JSONL"),
          (b"PAR1", "a Parquet file", "`chatft convert` reads a Hugging Face dataset directory holding it"),
          (b"ARROW1", "an Arrow file", "`chatft convert` reads a Hugging Face dataset directory holding it"),
          (b"BZh", "a bzip2-compressed file", "decompress it first (bunzip2)"),
          (b"\xfd7zXZ\x00", "an xz-compressed file", "decompress it first (unxz)"),
          (b"\x28\xb5\x2f\xfd", "a zstd-compressed file", "decompress it first (unzstd)"))


def file_fault(head: bytes, whole: bool) -> tuple[str, str] | None:
    """A fault of the whole file, found from its first bytes (`whole`: `head` is the entire file), as
    (code, message), or None. Codes: `not_utf8` (UTF-16/UTF-32, with or without byte order mark),
    `not_json_lines` (one JSON document, pretty-printed objects, a binary format, plain text)."""
    convert = "; convert it with `iconv -f {0} -t UTF-8 IN > OUT` (or save as UTF-8 without BOM)"
    for bom, name in _UNICODE_BOMS:
        if head.startswith(bom):
            return "not_utf8", (f"the file is {name} with a byte order mark, not UTF-8 (Windows PowerShell's "
                                f"`>` and Out-File write UTF-16)" + convert.format(name.replace(" ", "")))
    # Without a mark: JSON text starts with ASCII, so the NUL bytes around its first characters give the encoding
    # away (the method of RFC 4627 section 3).
    first = head[:4]
    if len(first) == 4 and 0 in first:
        name = {(True, True, True, False): "UTF-32 BE", (False, True, True, True): "UTF-32 LE",
                (True, False, True, False): "UTF-16 BE", (False, True, False, True): "UTF-16 LE"}.get(
            tuple(b == 0 for b in first))
        if name:
            return "not_utf8", (f"the file looks like {name} (NUL bytes between its characters), not UTF-8"
                                + convert.format(name.replace(" ", "")))
    for magic, what, fix in _MAGIC:
        if head.startswith(magic):
            return "not_json_lines", f"the file is {what}, not JSON Lines: {fix}"
    text = head[3:] if head.startswith(BOM) else head
    lone_crs = text.count(b"\r") - text.count(b"\r\n")
    if lone_crs and lone_crs >= text.count(b"\n"):
        return "cr_line_endings", ("the file's lines end with a lone carriage return (\\r, classic Mac OS line "
                                   "endings), not \\n: convert them with `tr '\\r' '\\n' < IN > OUT`")
    lines = [line for line in text.split(b"\n")[: HEAD_LINES * 4] if line.strip()][:HEAD_LINES]
    if not whole and lines and not text.endswith(b"\n"):
        cut = lines.pop()  # cut by the end of the head: only its start says anything
        if not lines and cut.lstrip().startswith(b"["):
            lines = [cut]  # a one-line JSON array longer than the head
    if not lines:
        return None
    first_line = lines[0].strip()
    if first_line.startswith(b"["):
        shape = _json_shape(first_line) if first_line.endswith(b"]") or len(lines) > 1 or whole else "incomplete"
        only_line = whole and len(lines) == 1
        if shape == "incomplete" or (shape == "array of objects" and only_line):
            return "not_json_lines", ("the file is one JSON array of records (a JSON document), not JSON Lines, "
                                      "which holds one record object per line" + CONVERT)
        return None
    if first_line.startswith(b"{"):
        if _json_shape(first_line) != "incomplete":
            return None
        # The first line opens an object it does not close. A record broken by one stray line break leaves the
        # next lines whole; pretty-printed JSON (json.dump(indent=...), jq .) leaves none of them an object.
        if any(_json_shape(line.strip()) == "object" for line in lines[1:]):
            return None
        return "not_json_lines", ("the file is pretty-printed JSON (objects spread over several lines, as "
                                  "json.dump(..., indent=2) or jq . write), not JSON Lines, which holds one "
                                  "record object per line" + CONVERT + " (or `jq -c .`)")
    if not any(line.lstrip()[:1] in (b"{", b"[") for line in lines):
        shown = show(first_line[:60].decode("utf-8", "replace"))
        comma = b"," in first_line or b"\t" in first_line
        return "not_json_lines", ("the file is not JSON: none of its first lines is a JSON object (the first is "
                                  f"{shown}{'; it looks like CSV/TSV' if comma else ''}). Chat JSONL holds one "
                                  '{"messages": [...]} object per line' + CONVERT)
    return None


def _json_shape(line: bytes) -> str:
    """"object", "array of objects", "other" (valid JSON of another kind), "incomplete" (valid so far but ends
    early) or "invalid"."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return "incomplete" if exc.pos >= len(line) else "invalid"
    if type(value) is dict:
        return "object"
    if type(value) is list and value and all(type(v) is dict for v in value):
        return "array of objects"
    return "other"


def _legacy_encoding_hint(line: bytes) -> str:
    """For a line that is not UTF-8: the 8-bit encoding it most likely is, and how to convert."""
    try:
        line.decode("cp1252")
    except UnicodeDecodeError:
        return ""
    return ("; it looks like Windows-1252/Latin-1 text: convert the file with "
            "`iconv -f WINDOWS-1252 -t UTF-8 IN > OUT`")


def _json_hint(text: str, exc: orjson.JSONDecodeError) -> str:
    """Plain words for the two commonest ways a line is not JSON."""
    if "content after document" in exc.msg:
        return ": two or more JSON values on one line; put each record on its own line"
    if exc.msg.startswith("unexpected character, expected a string key") and text.lstrip().startswith("{'"):
        return ": single-quoted keys look like a Python dict written with str(); write records with json.dumps"
    if exc.msg == "unexpected end of data":
        return ": the record ends early (a line break inside it? each record must be on one line)"
    return ""


class _Constant(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise _Constant(name)


def _nonstandard_constant(text: str) -> str | None:
    """The NaN/Infinity literal that made the line invalid, if that was the reason (Python's json accepts them)."""
    try:
        json.loads(text, parse_constant=_reject_constant)
    except _Constant as found:
        return str(found)
    except (ValueError, RecursionError):
        pass
    return None




def unparsed_line(line: bytes, exc: orjson.JSONDecodeError) -> tuple[str, str]:
    """(code, message) for a non-blank line orjson refused: not UTF-8, a NUL byte, a lone carriage return, a
    trailing comma, nesting past orjson's limit, or not JSON (with the reason in plain words)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return "invalid_utf8", (f"not valid UTF-8 (byte {bad.start + 1} of the line)" + _legacy_encoding_hint(line))
    nul = line.find(b"\x00")
    if nul >= 0:
        return "nul_byte", (f"a NUL byte (\\x00) at column {nul + 1}: JSON text cannot hold one (a file padded with "
                            "zeros, or a binary file?); remove it")
    cr = line.find(b"\r")
    if cr >= 0:
        return "lone_carriage_return", (f"a carriage return (\\r) without a line feed at column {cr + 1}: lines "
                                        "must end with \\n (or \\r\\n); one \\r between records is read as one "
                                        "line")
    if "depth limit" in exc.msg or "recursion" in exc.msg.lower():
        return "too_deeply_nested", (f"the record nests more than {ORJSON_MAX_DEPTH} levels deep (arrays or "
                                     "objects inside each other); nothing can read it")
    stripped = line.rstrip()
    if stripped.endswith(b",") and _is_object(stripped[:-1]):
        return "trailing_comma", ("a comma after the record: JSON Lines puts one record on each line with "
                                  "nothing after it (a JSON array's items copied line by line?); remove the comma")
    if "trailing comma" in exc.msg:
        return "trailing_comma", (f"a trailing comma before a closing bracket or brace (column {exc.colno}): JSON "
                                  "does not allow one; remove it")
    constant = _nonstandard_constant(text)
    if constant:
        return "invalid_json", (f"not valid JSON: {constant} is not a JSON value (NaN and Infinity literals are not "
                                "allowed; use null or a string)")
    return "invalid_json", f"not valid JSON: {exc.msg} (column {exc.colno})" + _json_hint(text, exc)


def _is_object(line: bytes) -> bool:
    try:
        return type(orjson.loads(line)) is dict
    except orjson.JSONDecodeError:
        return False
