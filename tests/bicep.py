"""Reading infra/*.bicep in tests, with the tree-sitter Bicep grammar (PyPI tree-sitter-bicep): syntax errors, and
params, variables, resources and modules as Python values. Expressions that are not literals are kept as their
source text (an identifier such as `runsQueueName`, or `string(maxDeliveryCount)`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

INFRA = Path(__file__).resolve().parent.parent / "infra"


@lru_cache(maxsize=1)
def _parser():
    import tree_sitter_bicep
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_bicep.language()))


@dataclass
class Resource:
    symbol: str
    type: str  # "Microsoft.Storage/storageAccounts@2023-05-01" (nested: the short child type, e.g. "config")
    body: dict
    conditional: bool
    existing: bool
    comment: str  # the // comment lines right above it


class BicepFile:
    def __init__(self, path: Path):
        self.path = path
        self.src = path.read_bytes()
        self.tree = _parser().parse(self.src)

    def text(self, node) -> str:
        return self.src[node.start_byte:node.end_byte].decode()

    def problems(self) -> list[str]:
        """Every ERROR or MISSING node, with its line."""
        found = []

        def walk(node):
            if node.type == "ERROR" or node.is_missing:
                found.append(f"{self.path.name}:{node.start_point[0] + 1}: {node.type} {self.text(node)[:60]!r}")
            for child in node.children:
                walk(child)

        walk(self.tree.root_node)
        return found

    def value(self, node) -> Any:
        if node.type == "object":
            out = {}
            for child in node.named_children:
                if child.type == "object_property":
                    key, val = child.named_children[0], child.named_children[-1]
                    out[self.value(key) if key.type == "string" else self.text(key)] = self.value(val)
            return out
        if node.type == "array":
            return [self.value(c) for c in node.named_children if c.type not in ("comment",)]
        if node.type == "string":
            if all(c.type in ("string_content", "escape_sequence") for c in node.named_children):
                return "".join(self.text(c) for c in node.named_children)
            return self.text(node)  # interpolated: keep the source
        if node.type == "number":
            return int(self.text(node))
        if node.type == "boolean":
            return self.text(node) == "true"
        return self.text(node)

    def _declarations(self, kind: str):
        return [n for n in self.tree.root_node.named_children if n.type == kind]

    def params(self) -> dict[str, Any]:
        out = {}
        for node in self._declarations("parameter_declaration"):
            children = node.named_children
            default = children[-1] if len(children) > 2 else None
            out[self.text(children[0])] = self.value(default) if default is not None else None
        return out

    def variables(self) -> dict[str, Any]:
        return {self.text(n.named_children[0]): self.value(n.named_children[-1])
                for n in self._declarations("variable_declaration")}

    def modules(self) -> dict[str, tuple[str, dict]]:
        out = {}
        for node in self._declarations("module_declaration"):
            children = node.named_children
            body = children[-1]
            if body.type == "if_statement":
                body = body.named_children[-1]
            out[self.text(children[0])] = (self.value(children[1]), self.value(body))
        return out

    def resources(self) -> list[Resource]:
        out = []

        def walk(node):
            for child in node.named_children:
                if child.type == "resource_declaration":
                    out.append(self._resource(child))
                walk(child)

        walk(self.tree.root_node)
        return out

    def _resource(self, node) -> Resource:
        children = node.named_children
        body = children[-1]
        conditional = body.type == "if_statement"
        if conditional:
            body = body.named_children[-1]
        comments = []
        prev = node.prev_named_sibling
        while prev is not None and prev.type == "comment":
            comments.insert(0, self.text(prev))
            prev = prev.prev_named_sibling
        existing = any(self.text(c) == "existing" for c in node.children if not c.is_named) or \
            b" existing " in self.src[node.start_byte:body.start_byte]
        return Resource(self.text(children[0]), self.value(children[1]), self.value(body), conditional, existing,
                        "\n".join(comments))


def files() -> list[BicepFile]:
    return [BicepFile(p) for p in sorted(INFRA.rglob("*.bicep"))]


def load(relative: str) -> BicepFile:
    return BicepFile(INFRA / relative)
