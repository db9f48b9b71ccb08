"""Azure ML's naming rules (shared/ml/naming.py) and the names the app derives from uploads.

The property tests feed arbitrary blob names (any unicode, empty, very long, punctuation only, path-like), ETags,
containers, base model names and redeployment attempts, and check every name the app derives against the rules a
backend enforces. The endpoint rule is also checked against azure-ai-ml's own validator, character for character.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shared.config import Settings
from shared.ml import naming
from shared.ml.port import TAG_APP, TAG_RUN, InvalidInput
from shared.ml.training_params import registered_model_name
from shared.runs import (endpoint_name_for, experiment_name_for, job_name_for, run_id_for, run_id_from_job_name,
                         slug)

RUN_ID = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")

blob_names = st.one_of(
    st.text(),  # any unicode, the empty name included
    st.text(alphabet=string.punctuation + " \t"),  # punctuation only: an empty slug
    st.text(min_size=200, max_size=3000),  # very long
    st.lists(st.text(max_size=30), min_size=1, max_size=8).map("/".join),  # path-like
    st.lists(st.text(max_size=10), min_size=1, max_size=4).map(lambda parts: ".".join(parts) + ".jsonl"),
    st.sampled_from(["", ".jsonl", "/", "a/b/.jsonl", "../../etc/passwd", "日本語のデータ.jsonl", "🙂🙂.jsonl",
                     "-.-.jsonl", "0001.jsonl", "İstanbul.jsonl", "x" * 5000]),
)
base_models = st.one_of(st.text(max_size=300), st.sampled_from(
    ["Phi-3-mini-4k-instruct", "Phi-3.5-mini-instruct", "azureml://registries/azureml/models/Phi-4/versions/7",
     "", "...", "ß/ü", "mistralai-Mistral-7B-Instruct-v01"]))
run_ids = st.from_regex(r"\A[a-z][a-z0-9-]{0,26}-[0-9a-f]{12}\Z")

RELAXED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RELAXED
@given(container=st.text(max_size=80), blob=blob_names, etag=st.text(max_size=80))
@example(container="training-data", blob="ultrachat_200k/train_sft.jsonl", etag='"0x8DC"')
@example(container="", blob="", etag="")
def test_every_name_derived_from_an_upload_passes_azures_rules(container, blob, etag):
    run_id = run_id_for(container, blob, etag)
    assert RUN_ID.fullmatch(run_id) and len(run_id) <= 40, run_id
    job = job_name_for(run_id)
    assert naming.JOB.ok(job), job
    assert run_id_from_job_name(job) == run_id
    model = registered_model_name("Phi-3-mini-4k-instruct", dataset=run_id.rsplit("-", 1)[0])
    assert naming.MODEL.ok(model), model
    endpoints = [endpoint_name_for(run_id, attempt) for attempt in range(6)]
    assert all(naming.ENDPOINT.ok(name) for name in endpoints), endpoints
    assert len(set(endpoints)) == len(endpoints)  # each redeployment gets a fresh name


@RELAXED
@given(run_id=run_ids, attempt=st.integers(min_value=0, max_value=10**6))
def test_endpoint_names_pass_for_any_run_id_and_attempt(run_id, attempt):
    name = endpoint_name_for(run_id, attempt)
    assert naming.ENDPOINT.ok(name), name
    assert name.endswith(run_id.rsplit("-", 1)[-1][:8] + (f"-{attempt}" if attempt else ""))  # unique per run


@RELAXED
@given(base=base_models, run_id=run_ids)
def test_model_and_experiment_names_pass_for_any_base_model(base, run_id):
    model = registered_model_name(base, dataset=run_id.rsplit("-", 1)[0])
    assert naming.MODEL.ok(model), model
    experiment = experiment_name_for(base)
    assert naming.EXPERIMENT.ok(experiment), experiment


def test_derived_names_keep_the_notebooks_shape():
    assert registered_model_name("Phi-3-mini-4k-instruct", "ultrachat-200k") == "Phi-3-mini-4k-instruct-ultrachat-200k"
    assert registered_model_name("Phi-3.5-mini-instruct", "chats") == "Phi-3-5-mini-instruct-chats"
    assert experiment_name_for("Phi-3-mini-4k-instruct") == "chat_completion_phi-3-mini-4k-instruct"
    assert naming.DEPLOYMENT.ok(Settings().deployment_name)


@RELAXED
@given(name=st.one_of(st.text(max_size=40), st.from_regex(r"\A[A-Za-z0-9-]{1,40}\Z")))
def test_endpoint_rule_is_azure_ai_mls_own(name):
    from azure.ai.ml.entities._endpoint._endpoint_helpers import validate_endpoint_or_deployment_name
    from azure.ai.ml.exceptions import ValidationException

    try:
        validate_endpoint_or_deployment_name(name)
        sdk_ok = True
    except ValidationException:
        sdk_ok = False
    # The SDK's regex uses `re.match` with `$`, which also accepts one trailing newline; the service does not.
    if name.endswith("\n"):
        sdk_ok = False
    assert naming.ENDPOINT.ok(name) == sdk_ok, name


@pytest.mark.parametrize("rule, good, bad", [
    (naming.ENDPOINT, ["abc", "a" * 32, "ft-chats-0123abcd-2", "A1-b"], ["ab", "a" * 33, "1abc", "abc-", "a_bc", "a.bc"]),
    (naming.JOB, ["a", "chatft-run-0123456789ab", "1_a-b", "x" * 255], ["", "-a", "_a", "a.b", "x" * 256, "a b"]),
    (naming.EXPERIMENT, ["a", "chat_completion_Phi-3-mini-4k-instruct", "x" * 256], ["", "_a", "a/b", "x" * 257]),
    (naming.MODEL, ["a", "Phi-3-mini-4k-instruct-ultrachat-200k", "m_1", "x" * 255],
     ["", "Phi-3.5-mini", "-a", "x" * 256, "ü"]),
])
def test_rules_at_their_edges(rule, good, bad):
    assert all(rule.ok(name) for name in good), [n for n in good if not rule.ok(n)]
    assert not any(rule.ok(name) for name in bad), [n for n in bad if rule.ok(n)]
    with pytest.raises(InvalidInput, match=rule.kind):
        rule.check(bad[0])


def test_model_versions_are_positive_integers():
    assert [naming.model_version_ok(v) for v in ["1", "2", "1700000000", "99"]] == [True] * 4
    for bad in ["0", "-1", "01", "1.0", "v1", "", "0123456789ab", " 1", None, 1]:
        with pytest.raises(InvalidInput, match="positive integers"):
            naming.check_model_version(bad)
    assert naming.next_model_version([]) == "1"
    assert naming.next_model_version(["1", "9", "10", "archived-x"]) == "11"


def test_tag_limits():
    assert naming.tag_problem({f"t{i}": "v" * 256 for i in range(50)}) is None
    assert naming.tag_problem({"k" * 512: ""}) is None
    assert "at most 50" in naming.tag_problem({f"t{i}": "v" for i in range(51)})
    assert naming.tag_problem({"k": "v" * 257}) and naming.tag_problem({"k" * 513: "v"})
    for bad in "<>%&\\?/":
        assert naming.tag_problem({f"a{bad}b": "v"}), bad
    assert naming.tag_problem({"k": 1}) and naming.tag_problem({"": "v"})
    with pytest.raises(InvalidInput, match="endpoint e"):
        naming.check_tags({"a/b": "v"}, "endpoint e")


def test_same_owner_compares_app_and_run_tags():
    mine = {TAG_APP: "chatft", TAG_RUN: "r-1", "chatft-created": "then"}
    assert naming.same_owner(mine, {TAG_APP: "chatft", TAG_RUN: "r-1", "chatft-created": "now"})
    assert not naming.same_owner(mine, {TAG_APP: "chatft", TAG_RUN: "r-2"})
    assert not naming.same_owner(mine, {TAG_APP: "other", TAG_RUN: "r-1"})
    assert not naming.same_owner({}, mine)


def test_slug_is_ascii_whatever_comes_in():
    assert slug("İstanbul ÜBER/ß") == "i-stanbul-ber"
    assert slug("!!!") == "" and slug("a" * 100, 10) == "a" * 10


# ------------------------------------------------------------------ model lines and traffic


@RELAXED
@given(blob=blob_names, override=st.one_of(st.none(), st.text(max_size=60)))
def test_every_line_an_upload_can_name_maps_to_a_valid_stable_endpoint_or_is_refused(blob, override):
    try:
        line = naming.line_of_upload(blob, override)
    except InvalidInput as refused:
        assert "model line" in str(refused)  # the reason names what was refused
        return
    if not line:
        assert "/" not in blob and not (override or "").strip()  # a root upload: one run, one endpoint
        return
    assert naming.is_line_name(line) and len(line) <= naming.LINE_MAX_LEN
    endpoint = naming.line_endpoint_name(line)
    assert naming.ENDPOINT.ok(endpoint) and endpoint == naming.line_endpoint_name(line)
    assert naming.line_name(line) == line  # sanitising is idempotent: a line is its own name


@RELAXED
@given(a=st.from_regex(naming.LINE_PATTERN, fullmatch=True), b=st.from_regex(naming.LINE_PATTERN, fullmatch=True))
def test_different_lines_never_share_an_endpoint(a, b):
    if a != b:
        assert naming.line_endpoint_name(a) != naming.line_endpoint_name(b)


def test_the_first_folder_or_the_override_names_the_line():
    assert naming.line_of_upload("support-bot/2026-12-01.jsonl") == "support-bot"
    assert naming.line_of_upload("Support Bot/weekly/2026-12-01.jsonl") == "support-bot"  # only the first folder
    assert naming.line_of_upload("2026-12-01.jsonl") == ""
    assert naming.line_of_upload("2026-12-01.jsonl", "Triage_Bot") == "triage-bot"
    assert naming.line_of_upload("support-bot/x.jsonl", "other") == "other"  # the override wins
    assert naming.line_endpoint_name("support-bot") == "ln-support-bot"
    with pytest.raises(InvalidInput, match="no letter or digit"):
        naming.line_of_upload("___/x.jsonl")
    with pytest.raises(InvalidInput, match="at most 29"):
        naming.line_of_upload("a-very-long-folder-name-for-a-line/x.jsonl")


@pytest.mark.parametrize("version, deployment", [("1", "v01"), ("9", "v09"), ("12", "v12"), ("123", "v123")])
def test_a_line_deployment_is_named_after_its_model_version_and_passes_azures_minimum_length(version, deployment):
    from azure.ai.ml.entities._endpoint._endpoint_helpers import validate_endpoint_or_deployment_name

    assert naming.line_deployment_name(version) == deployment
    validate_endpoint_or_deployment_name(deployment, is_deployment=True)  # azure-ai-ml's own check
    assert naming.version_of_line_deployment(deployment) == version
    assert naming.version_of_line_deployment("demo") is None
    with pytest.raises(InvalidInput):
        naming.line_deployment_name("0")


def test_same_owner_of_a_line_endpoint_is_the_app_and_the_line_not_the_run():
    first = {TAG_APP: "chatft", naming.TAG_LINE: "support-bot", TAG_RUN: "run-1"}
    assert naming.same_owner(first, {**first, TAG_RUN: "run-2"})  # a later run of the line: the same owner
    assert not naming.same_owner(first, {**first, naming.TAG_LINE: "triage-bot"})
    assert not naming.same_owner(first, {**first, TAG_APP: "other-app"})


@pytest.mark.parametrize("traffic, says", [
    ({"blue": 50}, "adds up to 50"), ({"blue": 60, "green": 60}, "adds up to 120"), ({"nosuch": 100}, "no deployment"),
    ({"blue": 100.0}, "whole percentage"), ({"blue": True}, "whole percentage"),
    ({"blue": -10, "green": 110}, "0 to 100"),
    ("blue=100", "must map")])
def test_live_traffic_breaking_azures_rules_is_refused(traffic, says):
    with pytest.raises(InvalidInput, match=says):
        naming.check_traffic("ep", traffic, ["blue", "green"])


def test_live_traffic_azure_takes():
    for traffic in ({"blue": 100}, {"blue": 90, "green": 10}, {"blue": 0, "green": 0}, {}):
        assert naming.check_traffic("ep", traffic, ["blue", "green"]) == traffic


@pytest.mark.parametrize("mirror, says", [({"green": 51}, "0 to 50"), ({"blue": 10, "green": 10}, "one deployment"),
                                          ({"nosuch": 10}, "no deployment")])
def test_mirrored_traffic_breaking_azures_rules_is_refused(mirror, says):
    with pytest.raises(InvalidInput, match=says):
        naming.check_mirror_traffic("ep", mirror, ["blue", "green"])
    assert naming.check_mirror_traffic("ep", {"green": 50, "blue": 0}, ["blue", "green"]) == {"green": 50, "blue": 0}


def test_a_deployment_with_traffic_cannot_be_deleted():
    assert "set them to 0" in naming.deletion_refusal("ep", "blue", {"blue": 10}, {})
    assert "mirrored" in naming.deletion_refusal("ep", "green", {"blue": 100}, {"green": 10})
    assert naming.deletion_refusal("ep", "blue", {"blue": 0, "green": 100}, {}) is None
