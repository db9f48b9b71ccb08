"""The Bicep in infra/ checked against the resource providers' published types: Azure/bicep-types-az's generated
`types.json` for each resource's exact `type@apiVersion`, vendored trimmed in tests/data/bicep_types/types.json
(tests/data/bicep_types/trim.py made it; the commit is in the file).

What is checked, walking tree-sitter-bicep's parse tree (tests/bicep.py parses):
- every property name at every level whose type is known (a misspelt one is an unknown property);
- required properties present (not on `existing` resources, nor in an object with a spread: it may supply them);
- every literal string within its enum (a union of string literals; an "open" union, which bicep-types-az writes
  where the REST spec says `modelAsString`, also takes other strings in Bicep but ARM rarely does: a literal outside
  the listed ones is reported unless the caller accepts it), and literals of the wrong kind (a string for a bool);
- read-only properties not set;
- a preview API version, unless the caller lists it with a reason.
Expressions that are not literals (parameters, function calls, interpolated strings) are not checked. Loops
(`[for ...]`), conditions (`if (...)`), ternaries (both branches), nested child resources (`resource c 'child'`)
and `parent:` children are followed.

Why our own walker: Bicep's own type checker (`bicep build`) is a .NET tool that is not installed on the build
machines, and no Python library reads bicep-types; the types format is small (bicep-types' src/bicep-types/src/
types.ts: ObjectType, DiscriminatedObjectType, UnionType, StringLiteralType, ...)."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tests.bicep import BicepFile

DATA = Path(__file__).resolve().parent / "data" / "bicep_types" / "types.json"

# bicep-types TypePropertyFlags (src/bicep-types/src/types.ts).
REQUIRED, READ_ONLY = 1, 2
# Properties of a resource declaration that are Bicep's own, not the provider's (Learn: "Resource declaration in
# Bicep": parent, scope, dependsOn).
LANGUAGE_PROPERTIES = {"parent", "scope", "dependsOn"}
_ESCAPES = {"\\'": "'", "\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\t": "\t", "\\$": "$"}


@dataclass(frozen=True)
class Declared:
    """One resource declaration: its full `Namespace/type[/child]@apiVersion`, symbol, body node and where."""
    file: BicepFile
    symbol: str
    type: str
    body: object  # tree-sitter Node: the object after `=`, loops and conditions unwrapped
    existing: bool
    line: int


@lru_cache(maxsize=1)
def vendored() -> dict:
    return json.loads(DATA.read_text())


def _unwrap(node):
    """The object of `[for x in xs: if (c) {...}]`, `if (c) {...}` or `(...)`."""
    while node is not None and node.type in ("for_statement", "if_statement", "parenthesized_expression"):
        node = node.named_children[-1]
    return node


def _literal(bicep: BicepFile, node) -> str | None:
    """The value of a string literal; None for an interpolated string or any other expression."""
    if node is None or node.type != "string":
        return None
    parts = []
    for child in node.named_children:
        if child.type == "string_content":
            parts.append(bicep.text(child))
        elif child.type == "escape_sequence":
            text = bicep.text(child)
            parts.append(_ESCAPES.get(text, text))
        else:
            return None
    return "".join(parts)


def declarations(bicep: BicepFile) -> list[Declared]:
    """Every resource declaration in `bicep`, nested children with their full type (parent's type + '/child',
    the parent's API version unless the child names its own)."""
    out: list[Declared] = []

    def walk(node, parent_type: str | None):
        for child in node.named_children:
            if child.type == "resource_declaration":
                symbol, type_node = child.named_children[0], child.named_children[1]
                written = _literal(bicep, type_node) or bicep.text(type_node)
                if parent_type is not None and "/" not in written.split("@")[0]:
                    base, _, version = parent_type.partition("@")
                    name, _, own = written.partition("@")
                    full = f"{base}/{name}@{own or version}"
                else:
                    full = written
                existing = any(c.type == "existing" for c in child.children if not c.is_named)
                body = _unwrap(child.named_children[-1])
                out.append(Declared(bicep, bicep.text(symbol), full, body, existing, child.start_point[0] + 1))
                walk(child, full)
            else:
                walk(child, parent_type)

    walk(bicep.tree.root_node, None)
    return out


def is_preview(type_and_version: str) -> bool:
    version = type_and_version.rpartition("@")[2].lower()
    return any(tag in version for tag in ("preview", "alpha", "beta", "privatepreview"))


class _Checker:
    def __init__(self, data: dict, open_values: dict[tuple[str, str], str]):
        self.types = data["types"]
        self.open_values = open_values  # (property path suffix, value) -> reason, for literals outside open enums
        self.problems: list[str] = []

    def t(self, ref: int) -> dict:
        return self.types[ref]

    def report(self, bicep: BicepFile, node, path: str, message: str):
        self.problems.append(f"{bicep.path.name}:{node.start_point[0] + 1}: {path}: {message}")

    # --- values ---------------------------------------------------------------------------------------------

    def value(self, bicep: BicepFile, node, ref: int, path: str, required: bool):
        if node is None:
            return
        if node.type == "parenthesized_expression":
            return self.value(bicep, node.named_children[-1], ref, path, required)
        if node.type == "ternary_expression":  # both outcomes must be valid
            for branch in node.named_children[1:]:
                self.value(bicep, branch, ref, path, required)
            return
        kind = self.t(ref)["kind"]
        if kind == "any":
            return
        if node.type == "for_statement":  # an array built by a loop: its body is one item
            item = self._member(ref, "array")
            if item is not None:
                self.value(bicep, _unwrap(node), self.t(item)["item"], f"{path}[]", required)
            return
        if node.type == "object":
            target = self._member(ref, "object", "discriminated")
            if target is None:
                self.report(bicep, node, path, f"an object where {self.describe(ref)} is expected")
            else:
                self.object(bicep, node, target, path, required)
            return
        if node.type == "array":
            item = self._member(ref, "array")
            if item is None:
                self.report(bicep, node, path, f"an array where {self.describe(ref)} is expected")
                return
            for element in node.named_children:
                if element.type != "comment":
                    self.value(bicep, element, self.t(item)["item"], f"{path}[]", required)
            return
        if node.type == "string":
            text = _literal(bicep, node)
            if text is not None:
                self.string(bicep, node, text, ref, path)
            return
        for syntax, wanted in (("boolean", "bool"), ("number", "int")):
            if node.type == syntax and self._member(ref, wanted) is None:
                self.report(bicep, node, path, f"{bicep.text(node)} where {self.describe(ref)} is expected")
        # Anything else (identifiers, calls, member access, null) is an expression: not checked.

    def _members(self, ref: int) -> list[int]:
        t = self.t(ref)
        return [m for e in t["elements"] for m in self._members(e)] if t["kind"] == "union" else [ref]

    def _member(self, ref: int, *kinds: str) -> int | None:
        """The first member of `ref` (itself, or one of its union) of one of `kinds`; an `any` matches all."""
        for m in self._members(ref):
            if self.t(m)["kind"] in kinds or self.t(m)["kind"] == "any":
                return m
        return None

    def describe(self, ref: int) -> str:
        t = self.t(ref)
        if t["kind"] == "union":
            return " | ".join(self.describe(e) for e in t["elements"])
        if t["kind"] == "literal":
            return repr(t["value"])
        return t.get("name") or t["kind"]

    def string(self, bicep: BicepFile, node, text: str, ref: int, path: str):
        members = [self.t(m) for m in self._members(ref)]
        kinds = {m["kind"] for m in members}
        literals = [m["value"] for m in members if m["kind"] == "literal"]
        if text in literals or kinds & {"any"}:
            return
        if not literals:
            if "string" not in kinds:
                self.report(bicep, node, path, f"'{text}' where {self.describe(ref)} is expected")
            return
        if "string" in kinds and any(path.endswith(suffix) and value == text for suffix, value in self.open_values):
            return
        hint = [v for v in literals if v.lower() == text.lower()] or difflib.get_close_matches(text, literals, 1)
        open_note = " (an open enum: Bicep takes other strings, list it with a reason if it is meant)" \
            if "string" in kinds else ""
        self.report(bicep, node, path, f"'{text}' is not one of {sorted(literals)}{open_note}"
                                       + (f"; did you mean '{hint[0]}'?" if hint else ""))

    # --- objects --------------------------------------------------------------------------------------------

    def object(self, bicep: BicepFile, node, ref: int, path: str, required: bool, extra: set[str] = frozenset()):
        entries, open_object = [], False
        for child in node.named_children:
            if child.type == "comment":
                continue
            if child.type != "object_property":  # a spread (`...x`): it may hold any property
                open_object = True
                continue
            key = child.named_children[0]
            if key.type == "resource_declaration":  # a nested child resource: checked on its own
                continue
            name = _literal(bicep, key) if key.type == "string" else bicep.text(key)
            if name is None:  # an interpolated key: unknown name
                open_object = True
                continue
            entries.append((name, key, child.named_children[-1]))
        t = self.t(ref)
        properties = dict(t.get("properties", {}))
        additional = t.get("additionalProperties")
        if t["kind"] == "discriminated":
            properties = dict(t["baseProperties"])
            tag = next((v for n, _, v in entries if n == t["discriminator"]), None)
            chosen = _literal(bicep, tag) if tag is not None else None
            if tag is None:
                if required:
                    self.report(bicep, node, path, f"required property '{t['discriminator']}' is missing")
                return
            if chosen is None:  # an expression picks the variant: any variant's properties may appear
                for element in t["elements"].values():
                    properties.update({k: {**p, "required": False} for k, p in self.t(element)["properties"].items()})
                required = False
            elif chosen not in t["elements"]:
                hint = difflib.get_close_matches(chosen, list(t["elements"]), 1)
                self.report(bicep, tag, f"{path}.{t['discriminator']}",
                            f"'{chosen}' is not one of {sorted(t['elements'])}" + (f"; did you mean '{hint[0]}'?" if hint else ""))
                return
            else:
                properties.update(self.t(t["elements"][chosen])["properties"])
        for name, key, value in entries:
            where = f"{path}.{name}"
            if name in extra:
                continue
            prop = properties.get(name)
            if prop is None:
                if additional is not None:
                    self.value(bicep, value, additional, where, required)
                    continue
                hint = [p for p in properties if p.lower() == name.lower()] or \
                    difflib.get_close_matches(name, list(properties), 1)
                self.report(bicep, key, where, f"unknown property '{name}' of {t.get('name') or 'this object'}"
                                               + (f"; did you mean '{hint[0]}'?" if hint else ""))
                continue
            if prop.get("readOnly") and not prop.get("required"):
                self.report(bicep, key, where, "read-only property: Azure sets it")
                continue
            if prop.get("type") is not None:
                self.value(bicep, value, prop["type"], where, required)
        if required and not open_object:
            present = {n for n, _, _ in entries}
            for name, prop in properties.items():
                if prop.get("required") and not prop.get("readOnly") and name not in present:
                    self.report(bicep, node, path, f"required property '{name}' is missing")


def check(bicep_files: list[BicepFile], allowed_previews: dict[str, str] | None = None,
          open_values: dict[tuple[str, str], str] | None = None, data: dict | None = None) -> list[str]:
    """Problems (`file:line: symbol.path: message`) of every resource in `bicep_files` against the vendored types.

    `allowed_previews`: `type@apiVersion` -> why that preview version is used. `open_values`: (property path
    suffix, value) -> why a literal outside an open enum's listed values is meant."""
    data = data or vendored()
    allowed_previews = allowed_previews or {}
    checker = _Checker(data, open_values or {})
    for bicep in bicep_files:
        for d in declarations(bicep):
            where = f"{bicep.path.name}:{d.line}: {d.symbol}"
            if is_preview(d.type) and d.type not in allowed_previews:
                checker.problems.append(f"{where}: preview API version {d.type}: use a GA one, or list it with a "
                                        "reason (preview versions retire, and a retired one stops `azd up`)")
            ref = data["resources"].get(d.type)
            if ref is None:
                checker.problems.append(f"{where}: no vendored types for {d.type}: refresh them with "
                                        "tests/data/bicep_types/trim.py (or the version is not in bicep-types-az)")
                continue
            if d.body is None or d.body.type != "object":
                continue
            checker.object(bicep, d.body, ref, d.symbol, required=not d.existing, extra=LANGUAGE_PROPERTIES)
    return checker.problems


def used_types(bicep_files: list[BicepFile]) -> set[str]:
    """Every `type@apiVersion` the files declare (what trim.py vendors)."""
    return {d.type for bicep in bicep_files for d in declarations(bicep)}
