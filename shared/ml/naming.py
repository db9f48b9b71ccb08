"""Azure Machine Learning's own rules for names, model versions and tags, in one place. Pure: no SDK, no I/O.

Azure enforces these on the service side (azure-ai-ml checks only endpoint and deployment names on the client), so
a name that breaks them fails hours into a run, after the GPU time is spent. Who uses this module:
- the cloud fake (tests/fakes.py) and the local workspace refuse what Azure refuses, with `InvalidInput`;
- the Azure adapter checks before calling, so a refusal costs no round trip and has the same error class;
- the app's name derivation (`shared.runs`, `shared.ml.training_params.registered_model_name`) builds names from
  these limits, and tests/test_naming.py checks, for arbitrary uploads, that every derived name passes.

Where two published sources differ, the narrower rule is kept (noted at each rule).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from .port import TAG_APP, TAG_LINE, TAG_RUN, InvalidInput


@dataclass(frozen=True)
class NameRule:
    kind: str
    pattern: re.Pattern[str]
    min_len: int
    max_len: int
    says: str  # the rule in words, for the error message

    def ok(self, name: object) -> bool:
        return (isinstance(name, str) and self.min_len <= len(name) <= self.max_len
                and self.pattern.fullmatch(name) is not None)

    def check(self, name: object) -> str:
        """`name` if it passes, else InvalidInput saying the rule (the name is cut short in the message)."""
        if not self.ok(name):
            raise InvalidInput(f"{self.kind} name {str(name)[:60]!r} is not valid in Azure ML: {self.says}")
        return name  # type: ignore[return-value]


# Online endpoints and their deployments: 3-32 characters, a letter first, then letters, digits and hyphens, not
# ending with a hyphen. Source: azure-ai-ml 1.35.2 `validate_endpoint_or_deployment_name`
# (entities/_endpoint/_endpoint_helpers.py) with `EndpointConfigurations` (constants/_endpoint.py:
# NAME_REGEX_PATTERN ^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$, 3..32); Learn "Deploy and score a model with an online
# endpoint" (name unique within the Azure region). The ARM spec's pattern for onlineEndpoints is wider
# (^[a-zA-Z0-9][a-zA-Z0-9\-_]{0,254}$): the SDK's is what a create goes through.
ENDPOINT_MAX_LEN = 32
ENDPOINT = NameRule("endpoint", re.compile(r"[A-Za-z](?:[-A-Za-z0-9]*[A-Za-z0-9])?"), 3, ENDPOINT_MAX_LEN,
                    "3-32 characters, a letter first, then letters, digits and hyphens, not ending with a hyphen")
DEPLOYMENT = NameRule("deployment", ENDPOINT.pattern, 3, ENDPOINT_MAX_LEN, ENDPOINT.says)

# Jobs: ARM spec Microsoft.MachineLearningServices/workspaces/jobs, name pattern ^[a-zA-Z0-9][a-zA-Z0-9\-_]{0,254}$
# (azure-rest-api-specs, as generated in Azure/bicep-types-az machinelearningservices 2025-06-01 types.md). The run
# history API's runId pattern ^[a-zA-Z0-9][\w-]{0,255}$ (azure-ai-ml _restclient/runhistory) is wider.
JOB_MAX_LEN = 255
JOB = NameRule("job", re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*"), 1, JOB_MAX_LEN,
               "1-255 characters, a letter or digit first, then letters, digits, '_' and '-'")

# Experiments: the service's own message "Experiment name must be 1-256 characters, start with a letter or a number,
# and can only contain letters, numbers, underscores, and dashes." (quoted in microsoft/dstoolkit-mlops-v2 PR 180 and
# dotnet/machinelearning-modelbuilder issue 1773). SDK v1 documented 3-36; v2 (azure-ai-ml) checks nothing.
EXPERIMENT_MAX_LEN = 256
EXPERIMENT = NameRule("experiment", re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*"), 1, EXPERIMENT_MAX_LEN,
                      "1-256 characters, a letter or digit first, then letters, digits, '_' and '-'")

# Workspace models: ARM spec Microsoft.MachineLearningServices/workspaces/models, name pattern
# ^[a-zA-Z0-9][a-zA-Z0-9\-_]{0,254}$ (same source as jobs). The model data-plane API (azure-ai-ml
# _restclient/model_dataplane) also takes '.', the ARM one does not: '.' is refused (registry base models such as
# Phi-3.5-mini-instruct have one, so the derived name replaces it).
MODEL_MAX_LEN = 255
MODEL = NameRule("model", re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*"), 1, MODEL_MAX_LEN,
                 "1-255 characters, a letter or digit first, then letters, digits, '_' and '-'")

# Workspace model versions are positive integers, unlike data assets and environments (azureml-examples issue 2725,
# MachineLearningNotebooks issue 289); azure-ai-ml does not check it on the client. Written without leading zeros, so
# one integer has one spelling ("01" and "1" would name the same version).
_MODEL_VERSION = re.compile(r"[1-9][0-9]{0,17}")

# Tags of ARM resources (online endpoints are ARM tracked resources; the same limits are applied to model tags):
# at most 50 tags, a name of 1-512 characters without < > % & \ ? /, a value of at most 256 characters. Source:
# Learn "Use tags to organize your Azure resources", Limitations (azure-resource-manager/management/tag-resources).
MAX_TAGS = 50
MAX_TAG_NAME_LEN = 512
MAX_TAG_VALUE_LEN = 256
_TAG_NAME_FORBIDDEN = set('<>%&\\?/')


def check_endpoint_name(name: object) -> str:
    return ENDPOINT.check(name)


def check_deployment_name(name: object) -> str:
    return DEPLOYMENT.check(name)


def check_job_name(name: object) -> str:
    return JOB.check(name)


def check_experiment_name(name: object) -> str:
    return EXPERIMENT.check(name)


def check_model_name(name: object) -> str:
    return MODEL.check(name)


def model_version_ok(version: object) -> bool:
    return isinstance(version, str) and _MODEL_VERSION.fullmatch(version) is not None


def check_model_version(version: object) -> str:
    """`version` if it is a positive integer written without leading zeros, else InvalidInput."""
    if not model_version_ok(version):
        raise InvalidInput(f"model version {str(version)[:40]!r} is not valid in Azure ML: workspace model versions "
                           f"are positive integers (1, 2, ...)")
    return version  # type: ignore[return-value]


def tag_problem(tags: object) -> str | None:
    """What is wrong with `tags` under Azure's tag limits, or None."""
    if tags is None:
        return None
    if not isinstance(tags, Mapping):
        return "tags must be a mapping of names to values"
    if len(tags) > MAX_TAGS:
        return f"{len(tags)} tags; Azure allows at most {MAX_TAGS}"
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"tag {str(key)[:40]!r}: names and values must be strings"
        if not 1 <= len(key) <= MAX_TAG_NAME_LEN:
            return f"tag name {key[:40]!r}: 1-{MAX_TAG_NAME_LEN} characters"
        if _TAG_NAME_FORBIDDEN & set(key):
            return f"tag name {key[:40]!r}: Azure refuses the characters < > % & \\ ? /"
        if len(value) > MAX_TAG_VALUE_LEN:
            return f"tag {key[:40]!r}: a value of at most {MAX_TAG_VALUE_LEN} characters"
    return None


def check_tags(tags: object, what: str) -> None:
    """InvalidInput if `tags` (of `what`, e.g. "endpoint x") break Azure's tag limits."""
    problem = tag_problem(tags)
    if problem:
        raise InvalidInput(f"tags of {what} are not valid in Azure: {problem}")


def next_model_version(existing: Iterable[str]) -> str:
    """The next free integer version after `existing` (versions that are not integers are ignored)."""
    numbers = [int(v) for v in existing if isinstance(v, str) and v.isdigit()]
    return str(max(numbers, default=0) + 1)


def same_owner(existing_tags: Mapping[str, str] | None, requested_tags: Mapping[str, str] | None) -> bool:
    """Whether a create of an existing endpoint comes from the caller that made it (same app and run tags; for a
    model line's endpoint, same app and line), so it is a repetition (a no-op), not a second endpoint wanting a
    taken name."""
    existing, requested = existing_tags or {}, requested_tags or {}
    owner = (TAG_APP, TAG_LINE) if requested.get(TAG_LINE) else (TAG_APP, TAG_RUN)
    return all(existing.get(tag) == requested.get(tag) for tag in owner)


# ------------------------------------------------------------------------------------------- traffic

# Live traffic: whole percentages per deployment adding up to 100 (ARM OnlineEndpointProperties.traffic "Traffic
# values need to sum to 100"; an endpoint with no deployment, or every deployment at 0, has a sum of 0, as the Learn
# "Safe rollout for online endpoints" walkthrough sets {"blue": 0, "green": 100}). Mirrored traffic: ARM
# OnlineEndpointProperties.mirrorTraffic "Traffic values need to sum to utmost 50", and Learn "Safe rollout for
# online endpoints" (how-to-safely-rollout-online-endpoints): traffic can be mirrored to only one deployment, up to
# 50%. Only deployments of the endpoint can be named.
MAX_MIRROR_PERCENT = 50


def _shares(endpoint: str, what: str, shares: object, deployments: Iterable[str], ceiling: int) -> dict[str, int]:
    if not isinstance(shares, Mapping):
        raise InvalidInput(f"{what} of endpoint {endpoint} must map deployment names to percentages")
    unknown = sorted(str(k)[:40] for k in shares if k not in set(deployments))
    if unknown:
        raise InvalidInput(f"endpoint {endpoint} has no deployment {', '.join(unknown)}: {what} can only name its "
                           f"deployments")
    for name, value in shares.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= ceiling:
            raise InvalidInput(f"{what} of deployment {name} of endpoint {endpoint} must be a whole percentage from 0 "
                               f"to {ceiling}, not {str(value)[:20]}")
    return dict(shares)


def check_traffic(endpoint: str, traffic: object, deployments: Iterable[str]) -> dict[str, int]:
    """`traffic` if Azure would take it for `endpoint` with these deployments, else InvalidInput saying why."""
    shares = _shares(endpoint, "traffic", traffic, list(deployments), 100)
    if sum(shares.values()) not in (0, 100):
        raise InvalidInput(f"traffic of endpoint {endpoint} adds up to {sum(shares.values())}%; Azure ML needs 100 "
                           f"(or 0 to route none)")
    return shares


def check_mirror_traffic(endpoint: str, mirror: object, deployments: Iterable[str]) -> dict[str, int]:
    """`mirror` if Azure would take it as the endpoint's mirrored traffic, else InvalidInput saying why."""
    shares = _shares(endpoint, "mirrored traffic", mirror, list(deployments), MAX_MIRROR_PERCENT)
    if sum(1 for v in shares.values() if v) > 1:
        raise InvalidInput(f"mirrored traffic of endpoint {endpoint} names {sum(1 for v in shares.values() if v)} "
                           f"deployments; Azure ML mirrors to one deployment only")
    return shares


def deletion_refusal(endpoint: str, deployment: str, traffic: Mapping[str, int],
                     mirror: Mapping[str, int]) -> str | None:
    """Why the deployment cannot be deleted now (it still takes live or mirrored traffic), or None. The Learn safe
    rollout walkthrough moves all traffic away before deleting a deployment; the app follows that order everywhere,
    so a deletion never drops requests in flight to it."""
    if traffic.get(deployment, 0) or mirror.get(deployment, 0):
        return (f"deployment {deployment} of endpoint {endpoint} still takes {traffic.get(deployment, 0)}% of live "
                f"and {mirror.get(deployment, 0)}% of mirrored traffic; set them to 0 before deleting it")
    return None


# --------------------------------------------------------------------------------------- model lines

# A model line is what callers call: one endpoint for the line, one deployment per model version of it. The line is
# the upload's first folder (`support-bot/2026-12-01.jsonl`) or its `model_line` metadata; an upload at the root of
# the container has no line (one run, one endpoint). Its endpoint is `ln-<line>`, so the line's name must leave room
# for the prefix within the endpoint rule (3-32 characters): the mapping is then one-to-one and stable, never
# shortened or hashed, and a line name can be told from its endpoint name.
LINE_ENDPOINT_PREFIX = "ln-"
LINE_MAX_LEN = ENDPOINT_MAX_LEN - len(LINE_ENDPOINT_PREFIX)
_LINE_UNSAFE = re.compile(r"[^a-z0-9]+")
LINE_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,%d}[a-z0-9])?" % (LINE_MAX_LEN - 2)
_LINE = re.compile(LINE_PATTERN)


def line_name(raw: object) -> str:
    """The line named by `raw` (a folder name or the `model_line` override), sanitised: lower case, runs of anything
    but letters and digits made one hyphen, no hyphen at either end (`Support Bot` and `support_bot` are the line
    `support-bot`). InvalidInput when nothing is left or it is longer than LINE_MAX_LEN (29) characters: a line name
    is what callers call, so it is never cut short."""
    text = _LINE_UNSAFE.sub("-", str(raw).lower()).strip("-") if isinstance(raw, str) else ""
    if not text:
        raise InvalidInput(f"model line {str(raw)[:60]!r} has no letter or digit to name a line by")
    if len(text) > LINE_MAX_LEN:
        raise InvalidInput(f"model line {str(raw)[:60]!r} is {len(text)} characters once sanitised ({text[:40]!r}); "
                           f"a line name has at most {LINE_MAX_LEN} (its endpoint is {LINE_ENDPOINT_PREFIX}<line>, "
                           f"at most {ENDPOINT_MAX_LEN} in Azure ML)")
    return text


def is_line_name(text: object) -> bool:
    return isinstance(text, str) and _LINE.fullmatch(text) is not None


def line_of_upload(blob_name: str, override: str | None = None) -> str:
    """The line an upload belongs to: the `model_line` override, else the blob name's first folder, else "" (an
    upload at the container's root: no line). InvalidInput as `line_name`."""
    if override is not None and str(override).strip():
        return line_name(str(override).strip())
    folder, slash, _rest = blob_name.partition("/")
    return line_name(folder) if slash else ""


def line_endpoint_name(line: str) -> str:
    """The line's endpoint: always the same for the same line, and a different one for every other line."""
    if not is_line_name(line):
        raise InvalidInput(f"{str(line)[:60]!r} is not a sanitised line name (see `line_name`)")
    return check_endpoint_name(LINE_ENDPOINT_PREFIX + line)


def line_deployment_name(model_version: str) -> str:
    """The line's deployment of one model version: `v<version>`, at least two digits (`v01`, `v12`, `v123`), since
    Azure ML's deployment names have at least 3 characters (the endpoint rule above): azure-ai-ml 1.35's
    `validate_endpoint_or_deployment_name("v1", is_deployment=True)` raises "The name for a deployment must be at
    least 3 and at most 32 characters long"."""
    return check_deployment_name(f"v{check_model_version(model_version):0>2}")


def version_of_line_deployment(deployment_name: str) -> str | None:
    """The model version a line's deployment serves (`v03` -> "3"), or None for a name not made by
    `line_deployment_name`."""
    digits = deployment_name[1:] if deployment_name.startswith("v") else ""
    return str(int(digits)) if digits.isdigit() and len(digits) >= 2 and int(digits) > 0 else None
