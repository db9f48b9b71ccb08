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

from .port import TAG_APP, TAG_RUN, InvalidInput


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
    """Whether a create of an existing endpoint comes from the caller that made it (same app and run tags), so it
    is a repetition (a no-op), not a second endpoint wanting a taken name."""
    existing, requested = existing_tags or {}, requested_tags or {}
    return all(existing.get(tag) == requested.get(tag) for tag in (TAG_APP, TAG_RUN))
