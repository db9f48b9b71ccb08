"""Scoring translation without I/O: the Azure ML scoring request check, OpenAI request and answer translation,
server-sent events, model list, run view and run query."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from shared.api_errors import ApiError, error_body, openai_error_body, parse_body
from shared.protocol import MAX_TOKENS, ChatCompletion, ModelCard, ModelList, RunView
from shared.run_views import is_model_ref, model_list, run_query, run_view
from shared.runs import State, new_run
from shared.scoring import (Translated, apply_stop, chat_completion, chat_request, check_score_request,
                            completion_events, output_text)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
USER = [{"role": "user", "content": "x"}]
NOTEBOOK = {"input_data": {"input_string": [{"role": "user", "content": "What is LoRA?"}],
                           "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}},
            "params": {}}


def problem(call, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value


# ------------------------------------------------------------------------------ body and score request


def test_parse_body_limits_and_json():
    assert parse_body(b'{"a": 1}', 100) == {"a": 1}
    err = problem(parse_body, b"x" * 101, 100)
    assert err.status == 413 and "MAX_REQUEST_BYTES" in err.message
    for raw in (b"", b"{", b'{"a": NaN}', b'"\\ud800"'):
        assert problem(parse_body, raw, 100).status == 400


def test_the_notebook_request_passes():
    check_score_request(NOTEBOOK)
    check_score_request({"input_data": {"input_string": [{"role": "user", "content": "x"}],
                                        "parameters": {"num_beams": 2}}})  # unknown parameters pass on


@pytest.mark.parametrize("doc, fragment", [
    ([], "the body must be a JSON object"),
    ({}, "input_data is required"),
    ({"input_data": []}, "input_data must be an object"),
    ({"input_data": {}}, "input_data.input_string is required and must be a non-empty list"),
    ({"input_data": {"input_string": []}}, "input_data.input_string must be a non-empty list"),
    ({"input_data": {"input_string": [1]}}, "input_string[0] must be a message {role, content}"),
    ({"input_data": {"input_string": ["plain prompt"]}}, "input_string[0] must be a message {role, content}"),
    ({"input_data": {"input_string": [{"role": "tool", "content": "x"}]}}, "input_string[0].role must be one of"),
    ({"input_data": {"input_string": [{"role": "user"}]}}, "input_string[0].content is required and must be a string"),
    ({"input_data": {"input_string": USER, "parameters": []}}, "parameters must be an object"),
    ({"input_data": {"input_string": USER, "parameters": {"top_p": 1.5}}}, "top_p must be a number above 0 and at "
                                                                          "most 1"),
    ({"input_data": {"input_string": USER, "parameters": {"top_p": 0}}}, "top_p must be a number above 0"),
    ({"input_data": {"input_string": USER, "parameters": {"top_k": -1}}}, "top_k must be a whole number from 0"),
    ({"input_data": {"input_string": USER, "parameters": {"max_new_tokens": 0}}}, "max_new_tokens must be a whole"),
    ({"input_data": {"input_string": USER, "parameters": {"max_new_tokens": True}}}, "max_new_tokens must be"),
    ({"input_data": {"input_string": USER, "parameters": {"max_new_tokens": 1.5}}}, "max_new_tokens must be"),
    ({"input_data": {"input_string": USER, "parameters": {"do_sample": "yes"}}}, "do_sample must be true or false"),
    ({"input_data": {"input_string": USER, "parameters": {"return_full_text": 1}}}, "return_full_text must be true"),
    ({"input_data": {"input_string": USER}, "params": 3}, "params must be an object"),
])
def test_score_request_problems_are_named(doc, fragment):
    err = problem(check_score_request, doc)
    assert err.status == 400 and err.code == "invalid_body"
    assert fragment in err.message and "Expected" in err.message
    assert err.param in (None, "input_data", "params")  # the top-level field at fault


def test_many_problems_are_counted_not_all_listed():
    doc = {"input_data": {"input_string": [{"role": "x", "content": 1}] * 20}}
    err = problem(check_score_request, doc)
    assert "and 30 more" in err.message


# ------------------------------------------------------------------------------ OpenAI request


def test_chat_request_translates_to_the_notebook_format():
    request = chat_request({"model": "m", "messages": [{"role": "developer", "content": "be brief"},
                                                       {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                    {"type": "text", "text": "b"}]}],
                            "temperature": 0.6, "top_p": 0.9, "max_tokens": 200, "stop": "END", "user": "ignored"})
    assert request.scoring_request == {
        "input_data": {"input_string": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}],
                       "parameters": {"temperature": 0.6, "do_sample": True, "top_p": 0.9, "max_new_tokens": 200}},
        "params": {}}
    assert request.model == "m" and request.stop == ("END",) and not request.stream


def test_chat_request_parameters():
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert chat_request(base).scoring_request["input_data"]["parameters"] == {}  # the model's defaults
    greedy = chat_request({**base, "temperature": 0})
    assert greedy.scoring_request["input_data"]["parameters"] == {"do_sample": False}
    both = chat_request({**base, "max_tokens": 10, "max_completion_tokens": 20})
    assert both.scoring_request["input_data"]["parameters"] == {"max_new_tokens": 20}
    streamed = chat_request({**base, "stream": True, "stream_options": {"include_usage": True}, "n": 1})
    assert streamed.stream and streamed.include_usage


@pytest.mark.parametrize("change, fragment", [
    ({"model": ""}, "model is required"),
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "tool messages are not supported"),
    ({"messages": [{"role": "user", "content": None}]}, "content must be a string or a list of text parts"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "images"),
    ({"n": 2}, "n must be 1"),
    ({"temperature": 2.5}, "temperature must be at least 0 and at most 2"),
    ({"top_p": -0.1}, "top_p must be"),
    ({"max_tokens": 0}, "max_tokens must be a whole number"),
    ({"max_completion_tokens": MAX_TOKENS + 1}, "max_completion_tokens must be"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop must be"),
    ({"stop": [""]}, "stop must be"),
    ({"stream": "yes"}, "stream must be true or false"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage must be true or false"),
    ({"stream_options": 3}, "stream_options must be an object"),
    ({"tools": [{"type": "function"}]}, "tools are not supported"),
    ({"logprobs": True}, "logprobs must be false"),
    ({"response_format": {"type": "json_object"}}, "structured output is not supported"),
])
def test_chat_request_problems_are_named(change, fragment):
    doc = {"model": "m", "messages": [{"role": "user", "content": "x"}], **change}
    err = problem(chat_request, doc)
    assert err.status == 400 and fragment in err.message, err.message
    assert err.param == next(iter(change))  # OpenAI names the offending parameter


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=20)
roles = st.sampled_from(["system", "user", "assistant", "tool"]) | json_values
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": st.text() | json_values}), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["model", "messages", "temperature", "top_p", "max_tokens", "stop", "n",
                                        "stream", "stream_options", "tools", "logprobs", "response_format"]),
                       json_values | messages))
def test_any_json_either_translates_or_is_a_400(doc):
    try:
        request = chat_request(doc)
    except ApiError as err:
        assert err.status == 400
    else:
        orjson.dumps(request.scoring_request)
        check_score_request(request.scoring_request)  # what we send is what we accept


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_either_passes_the_score_check_or_is_a_400(doc):
    try:
        check_score_request(doc)
    except ApiError as err:
        assert err.status == 400


# ------------------------------------------------------------------------------ answers


def test_output_text_shapes():
    assert output_text({"output": "hi"}) == "hi"
    assert output_text([{"0": "hi"}]) == "hi"
    assert output_text([{"generated_text": "hi"}]) == "hi"
    assert output_text(["hi"]) == "hi"
    for odd in ({"result": 1}, [], None, 3, {"output": 3}):
        err = problem(output_text, odd)
        assert err.status == 502 and err.code == "upstream_bad_answer"


def test_apply_stop_cuts_at_the_first_sequence():
    assert apply_stop("a STOP b END c", ("END", "STOP")) == ("a ", True)
    assert apply_stop("abc", ("x",)) == ("abc", False)
    assert apply_stop("abc", ()) == ("abc", False)


def test_chat_completion_with_and_without_usage():
    request = Translated(model="m", scoring_request={}, stop=("\nUser:",))
    plain = chat_completion(request, {"output": "hello\nUser: more"}, CIMultiDict(), "chatcmpl-1", 123)
    assert plain.model_dump(exclude_none=True) == {"id": "chatcmpl-1", "object": "chat.completion", "created": 123,
                                                   "model": "m",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                                  "finish_reason": "stop"}]}
    headers = CIMultiDict({"X-Chatft-Prompt-Tokens": "7", "x-chatft-completion-tokens": "3",
                           "x-chatft-finish-reason": "length"})
    counted = chat_completion(Translated("m", {}), {"output": "hi"}, headers, "c", 1)
    assert counted.usage.model_dump() == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert counted.choices[0].finish_reason == "length"
    odd = CIMultiDict({"x-chatft-prompt-tokens": "-1", "x-chatft-completion-tokens": "²",
                       "x-chatft-finish-reason": "banana"})
    guarded = chat_completion(Translated("m", {}), {"output": "hi"}, odd, "c", 1)
    assert guarded.usage is None and guarded.choices[0].finish_reason == "stop"


def test_completion_events_follow_openai_chunks():
    completion = chat_completion(Translated("m", {}), {"output": "hi there"},
                                 CIMultiDict({"x-chatft-prompt-tokens": "2", "x-chatft-completion-tokens": "2"}),
                                 "c1", 5)
    raw = completion_events(completion, include_usage=True).decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = [json.loads(e[len("data: "):]) for e in raw.split("\n\n") if e and e != "data: [DONE]"]
    assert [e["object"] for e in events] == ["chat.completion.chunk"] * 4
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["delta"] == {"content": "hi there"}
    assert events[2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert events[3]["choices"] == [] and events[3]["usage"]["total_tokens"] == 4
    empty = chat_completion(Translated("m", {}), {"output": ""}, CIMultiDict(), "c2", 5)
    assert completion_events(empty).count(b"data: ") == 3  # no content chunk for an empty answer


def test_error_shapes():
    err = ApiError(410, "model_retired", "gone; redeploy")
    assert error_body(err) == {"error": {"code": "model_retired", "message": "gone; redeploy"}}
    assert openai_error_body(err) == {"error": {"message": "gone; redeploy", "type": "invalid_request_error",
                                                "param": None, "code": "model_retired"}}
    assert openai_error_body(ApiError(502, "upstream_error", "x"))["error"]["type"] == "api_error"
    assert openai_error_body(ApiError(400, "invalid_body", "n must be 1", param="n"))["error"]["param"] == "n"


# ------------------------------------------------------------------------------ models and runs


def deployed(run_id: str, model: str, created: datetime):
    run = new_run(run_id, created)
    for state in (State.VALIDATING, State.QUEUED, State.SUBMITTED, State.TRAINED):
        run = run.advance(state, created)
    run = run.advance(State.REGISTERED, created, model_name=model, model_version="1")
    run = run.advance(State.DEPLOYING, created, endpoint_name=f"ft-{run_id}", deployment_name="demo")
    return run.advance(State.DEPLOYED, created, scoring_uri="https://ep.region.inference.ml.azure.com/score")


def test_model_list_names_then_run_ids():
    old = deployed("a-1", "chat", T0)
    new = deployed("a-2", "chat", T0.replace(hour=5))
    other = deployed("b-1", "other", T0)
    listing = model_list([old, other, new])
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["chat", "other", "a-2", "b-1", "a-1"]  # newest first
    assert listing["data"][0]["created"] == int(T0.replace(hour=5).timestamp())
    assert {m["object"] for m in listing["data"]} == {"model"}
    assert ModelList.model_validate(listing).model_dump() == listing  # the declared contract, nothing more
    assert ModelCard.model_validate(listing["data"][0]).model_dump() == listing["data"][0]


def test_run_view_lists_what_a_caller_needs():
    run = deployed("a-1", "chat", T0)
    view = run_view(run)
    assert view["state"] == "Deployed" and view["model"]["name"] == "chat"
    assert view["endpoint"] == {"name": "ft-a-1", "deployment": "demo",
                                "scoring_uri": "https://ep.region.inference.ml.azure.com/score",
                                "last_used_at": None, "keep": False}
    assert view["links"] == {"self": "/api/runs/a-1", "score": "/api/score/a-1"}
    retired = run.advance(State.RETIRED, T0)
    assert run_view(retired)["links"]["deploy"] == "/api/runs/a-1/deploy"
    received = run_view(new_run("r-1", T0))
    assert received["job"] is None and received["model"] is None and received["endpoint"] is None
    for view in (run_view(run), run_view(retired), received):  # the declared contract, nothing more or less
        assert RunView.model_validate(view).model_dump(exclude_unset=True) == view


def test_run_query():
    assert run_query({}).limit == 100 and run_query({}).states == ()
    query = run_query({"state": "Deployed, Retired", "limit": "5"})
    assert query.states == (State.DEPLOYED, State.RETIRED) and query.limit == 5
    for params in ({"state": "Sleeping"}, {"state": ""}, {"state": "deployed"}, {"state": "Deployed,"},
                   {"limit": ""}, {"limit": "0"}, {"limit": "1001"}, {"limit": "²"}, {"limit": "-1"}):
        assert problem(run_query, params).status == 400


def test_model_references():
    for good in ("phi-3-mini-chat", "phi-3-mini-chat:abc123", "run-0123456789ab", "Phi-3.5_mini"):
        assert is_model_ref(good)
    for bad in ("", "-x", "a b", "a/b", "a:b:c", "x" * 200, "é"):
        assert not is_model_ref(bad)
