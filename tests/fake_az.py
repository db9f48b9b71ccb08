#!/usr/bin/env python3
"""A fake `az` for the postdeploy hook's tests: put its folder first on PATH as `az`. It records every call (one
JSON line each in $FAKE_AZ_LOG) and keeps state in $FAKE_AZ_STATE (JSON), answering as the Azure CLI does for
the commands the hook uses, and refusing what the CLI would refuse:
- `functionapp keys list ... --query systemKeys.<name> -o tsv` prints the key (nothing when the app has none yet);
- `eventgrid system-topic event-subscription show|create|update`: show fails (exit 3, "not found") for a missing
  subscription; create fails for an existing one here (the hook must not rely on create being an upsert); update
  fails for a missing one; `--event-delivery-schema` and `--endpoint-type` are create-only options; a system
  topic offers only its own event types; a webhook endpoint must be HTTPS.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

TOPIC_EVENT_PREFIX = {"storage": "Microsoft.Storage.", "ml": "Microsoft.MachineLearningServices."}
CREATE_ONLY = {"--endpoint-type", "--event-delivery-schema"}


def parse(args: list[str]) -> tuple[list[str], dict[str, list]]:
    """Positional words, and options as name -> list of value lists (an option may repeat)."""
    words, options = [], {}
    i = 0
    while i < len(args):
        if args[i].startswith("--") or (args[i].startswith("-") and len(args[i]) == 2):
            name, values = args[i], []
            i += 1
            while i < len(args) and not (args[i].startswith("--") or
                                         (args[i].startswith("-") and args[i][1:2].isalpha())):
                values.append(args[i])
                i += 1
            options.setdefault(name, []).append(values)
        else:
            words.append(args[i])
            i += 1
    return words, options


def one(options: dict, *names: str) -> str:
    for name in names:
        if name in options:
            return options[name][-1][0]
    raise SystemExit(f"fake az: missing {names[0]}")


def main(argv: list[str]) -> int:
    state_path = Path(os.environ["FAKE_AZ_STATE"])
    state = json.loads(state_path.read_text())
    with open(os.environ["FAKE_AZ_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    words, options = parse(argv)

    if words[:3] == ["functionapp", "keys", "list"]:
        query = one(options, "--query")
        key = state.get("system_keys", {}).get(query.removeprefix("systemKeys."))
        if key:
            print(key)
        return 0

    if words[:3] == ["eventgrid", "system-topic", "event-subscription"]:
        verb = words[3]
        topic = one(options, "--system-topic-name")
        if topic not in state["topics"]:
            print(f"(ResourceNotFound) system topic {topic} not found", file=sys.stderr)
            return 3
        key = f"{one(options, '-g', '--resource-group')}/{topic}/{one(options, '-n', '--name')}"
        subs = state.setdefault("subscriptions", {})
        if verb == "show":
            if key not in subs:
                print(f"(ResourceNotFound) event subscription {key} not found", file=sys.stderr)
                return 3
            print(json.dumps(subs[key]))
            return 0
        if verb == "create" and key in subs:
            print(f"fake az: {key} already exists", file=sys.stderr)
            return 1
        if verb == "update":
            if key not in subs:
                print(f"(ResourceNotFound) event subscription {key} not found", file=sys.stderr)
                return 3
            bad = CREATE_ONLY & set(options)
            if bad:
                print(f"unrecognized arguments: {' '.join(sorted(bad))}", file=sys.stderr)
                return 2
        if verb not in ("create", "update"):
            print(f"fake az: unsupported {verb}", file=sys.stderr)
            return 2
        sub = dict(subs.get(key, {}))
        if "--endpoint" in options:
            endpoint = one(options, "--endpoint")
            if not endpoint.startswith("https://"):
                print("webhook endpoints must be HTTPS", file=sys.stderr)
                return 1
            sub["endpoint"] = endpoint
        if "--included-event-types" in options:
            types = options["--included-event-types"][-1]
            prefix = TOPIC_EVENT_PREFIX[state["topics"][topic]]
            if any(not t.startswith(prefix) for t in types):
                print(f"event types {types} are not offered by topic {topic}", file=sys.stderr)
                return 1
            sub["includedEventTypes"] = types
        if "--subject-begins-with" in options:
            sub["subjectBeginsWith"] = one(options, "--subject-begins-with")
        if "--subject-ends-with" in options:
            sub["subjectEndsWith"] = one(options, "--subject-ends-with")
        if "--advanced-filter" in options:
            sub["advancedFilters"] = [{"key": v[0], "operatorType": v[1], "values": v[2:]}
                                      for v in options["--advanced-filter"]]
        if verb == "create":
            sub["endpointType"] = one(options, "--endpoint-type")
            sub["eventDeliverySchema"] = one(options, "--event-delivery-schema")
        subs[key] = sub
        state_path.write_text(json.dumps(state, indent=1, sort_keys=True))
        return 0

    print(f"fake az: unsupported command {' '.join(words)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
