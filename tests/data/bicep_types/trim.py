"""Make types.json beside this file: the resource types infra/ declares, at their exact API versions, trimmed from
Azure/bicep-types-az's generated types (generated/<provider>/<namespace>/<apiVersion>/types.json).

    git clone --filter=blob:none https://github.com/Azure/bicep-types-az   # or any copy of it
    .venv/bin/python tests/data/bicep_types/trim.py path/to/bicep-types-az [commit]

It reads the files with `git show <commit>:<path>` (commit: HEAD by default) and records the commit it used.
Kept: property names, their required and read-only flags and types, string literals and unions of them,
discriminated objects (discriminator and variants), arrays' item types, additionalProperties. Dropped:
descriptions, patterns and lengths, and the types under read-only properties (only their names are needed).
The format (kinds object, discriminated, union, literal, string, int, bool, any, array; references are indexes
into "types") follows bicep-types' src/bicep-types/src/types.ts, flattened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
REQUIRED, READ_ONLY = 1, 2  # bicep-types TypePropertyFlags


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def _candidates(listing: list[str], type_and_version: str) -> list[str]:
    """generated/<provider>[_n]/<namespace>/<apiVersion>/types.json paths that may hold `type_and_version`."""
    namespace = type_and_version.split("/")[0].lower()
    version = type_and_version.rpartition("@")[2].lower()
    return [p for p in listing if p.lower().endswith(f"/{namespace}/{version}/types.json")]


class _Trimmer:
    def __init__(self):
        self.types: list[dict] = []
        self.seen: dict[tuple[str, int], int] = {}  # (source path, index there) -> index in self.types

    def add(self, path: str, source: list[dict], index: int) -> int:
        key = (path, index)
        if key in self.seen:
            return self.seen[key]
        self.seen[key] = mine = len(self.types)
        self.types.append({})  # reserved first: types can be recursive
        self.types[mine] = self.convert(path, source, source[index])
        return mine

    def ref(self, path: str, source: list[dict], ref: dict) -> int:
        return self.add(path, source, int(ref["$ref"].removeprefix("#/")))

    def props(self, path: str, source: list[dict], properties: dict) -> dict:
        out = {}
        for name, prop in properties.items():
            flags = prop.get("flags", 0)
            entry: dict = {}
            if flags & REQUIRED:
                entry["required"] = True
            if flags & READ_ONLY:
                entry["readOnly"] = True
            # A read-only property's own type is never needed: setting it at all is the problem.
            entry["type"] = None if flags & READ_ONLY and not flags & REQUIRED else self.ref(path, source, prop["type"])
            out[name] = entry
        return out

    def convert(self, path: str, source: list[dict], t: dict) -> dict:
        kind = t["$type"]
        if kind == "ObjectType":
            out = {"kind": "object", "name": t.get("name"), "properties": self.props(path, source, t.get("properties", {}))}
            if "additionalProperties" in t:
                out["additionalProperties"] = self.ref(path, source, t["additionalProperties"])
            return out
        if kind == "DiscriminatedObjectType":
            return {"kind": "discriminated", "name": t.get("name"), "discriminator": t["discriminator"],
                    "baseProperties": self.props(path, source, t.get("baseProperties", {})),
                    "elements": {k: self.ref(path, source, v) for k, v in t["elements"].items()}}
        if kind == "UnionType":
            return {"kind": "union", "elements": [self.ref(path, source, e) for e in t["elements"]]}
        if kind == "StringLiteralType":
            return {"kind": "literal", "value": t["value"]}
        if kind == "ArrayType":
            return {"kind": "array", "item": self.ref(path, source, t["itemType"])}
        simple = {"StringType": "string", "IntegerType": "int", "BooleanType": "bool", "AnyType": "any",
                  "NullType": "null"}
        if kind in simple:
            return {"kind": simple[kind]}
        raise ValueError(f"{path}: type kind {kind} is not handled")


def trim(repo: Path, commit: str, wanted: set[str]) -> dict:
    commit = _git(repo, "rev-parse", commit).strip()
    listing = _git(repo, "ls-tree", "-r", "--name-only", commit, "generated/").split()
    trimmer, resources, files, missing = _Trimmer(), {}, {}, []
    for type_and_version in sorted(wanted):
        for path in _candidates(listing, type_and_version):
            source = json.loads(_git(repo, "show", f"{commit}:{path}"))
            found = [i for i, t in enumerate(source) if t["$type"] == "ResourceType"
                     and t["name"].lower() == type_and_version.lower()]
            if found:
                resources[type_and_version] = trimmer.ref(path, source, source[found[0]]["body"])
                files[type_and_version] = path
                break
        else:
            missing.append(type_and_version)
    return {"source": {"repository": "https://github.com/Azure/bicep-types-az", "commit": commit,
                       "made_by": "tests/data/bicep_types/trim.py", "files": files, "not_found": missing},
            "resources": resources, "types": trimmer.types}


def _dumps(data: dict) -> str:
    """Indented, but one line per type: small diffs when the types are refreshed."""
    head = json.dumps({k: v for k, v in data.items() if k != "types"}, indent=1)[:-2]
    lines = ",\n".join(f"  {json.dumps(t, separators=(',', ':'))}" for t in data["types"])
    return f'{head},\n "types": [\n{lines}\n ]\n}}\n'


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from tests.bicep import files
    from tests.bicep_types import used_types

    data = trim(Path(argv[1]), argv[2] if len(argv) == 3 else "HEAD", used_types(files()))
    (HERE / "types.json").write_text(_dumps(data))
    print(f"{len(data['resources'])} resource types, {len(data['types'])} types from {data['source']['commit']}"
          + (f"; not in bicep-types-az: {data['source']['not_found']}" if data["source"]["not_found"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
