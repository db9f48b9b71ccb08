"""The HTTP wire contracts, each declared once as a pydantic v2 model: the Azure ML scoring request and answer,
OpenAI's chat request, answer, chunk, model list and error, the API's error, and the run view.

The proxy validates requests with these models, the local model server validates the same scoring request with
the same model (so anything the proxy accepts the stand-in deployment accepts), and the OpenAPI document is
generated from them (`shared.openapi`). After vLLM's `entrypoints/openai/protocol.py`, trimmed to this product.

Validation is strict (JSON types as sent: `true` is not a number, `1.0` is not a whole number). A problem is
reported as `<where> <rule>`: the rule is the field's `description`, so the message a caller reads, the check
and the document say the same thing. pydantic is imported only by the routes that use it (cold start).
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .validation.report import ValidationReport
from .run_views import MAX_RUNS_LIMIT, MODEL_REF_PATTERN, RUN_ID_PATTERN  # noqa: F401  (the document's)

MAX_TOKENS = 1_000_000  # above any deployed model's context; bounds the integers a caller may send
MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_PROBLEMS = 10  # problems named in one 400; more are counted
MESSAGE_ROLES = ("system", "user", "assistant")
# OpenAI's "developer" role is its newer name for "system"; the deployments only know the three above.
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH_REASONS = ("stop", "length")


def _integral(value: Any) -> Any:
    # JSON has one number type: 8.0 is the whole number 8 (JSON Schema's "integer" says so too), 8.5 is not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


_Whole = BeforeValidator(_integral)
Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS), _Whole]
TopK = Annotated[int, Field(ge=0, le=MAX_TOKENS), _Whole]
OnlyOne = Annotated[int, Field(ge=1, le=1), _Whole]
_TOKENS = f"must be a whole number from 1 to {MAX_TOKENS}"


class Contract(BaseModel):
    """A wire model. `shape` names it in a problem ("must be <shape>") when a value is not an object at all."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)
    shape: ClassVar[str] = "an object"


# ----------------------------------------------------------------------- the Azure ML scoring request


class Message(Contract):
    """One turn of the conversation."""

    shape: ClassVar[str] = "a message {role, content}"
    role: Literal["system", "user", "assistant"] = Field(description="must be one of " + ", ".join(MESSAGE_ROLES))
    content: str = Field(description="must be a string")


class ScoringParameters(Contract):
    """Generation parameters of an Azure ML chat deployment (transformers `generate` options). Each is checked the
    same way by the proxy and the local model server; others are passed on unchecked (deployments of other models
    may understand more `generate` options; the local model server ignores them)."""

    model_config = ConfigDict(extra="allow")
    temperature: float | None = Field(None, ge=0, description="must be a number at least 0 (0 decodes greedily)")
    top_p: float | None = Field(None, gt=0, le=1, description="must be a number above 0 and at most 1")
    # transformers: top_k 0 turns top-k filtering off.
    top_k: TopK | None = Field(None, description=f"must be a whole number from 0 to {MAX_TOKENS} (0: no top-k "
                                                 f"filtering)")
    max_new_tokens: Tokens | None = Field(None, description=_TOKENS)
    repetition_penalty: float | None = Field(None, gt=0, description="must be a number above 0")
    do_sample: bool | None = Field(None, description="must be true or false")
    return_full_text: bool | None = Field(None, description="must be true or false (chat deployments answer with "
                                                            "the assistant's turn only either way)")


class ScoringInput(Contract):
    shape: ClassVar[str] = "an object"
    input_string: list[Message] = Field(min_length=1, description="must be a non-empty list of messages "
                                                                  "{role, content} of one conversation")
    parameters: ScoringParameters = Field(default_factory=ScoringParameters, description="must be an object")


class ScoreRequest(Contract):
    """The Azure ML chat-completion scoring request, as the fine-tuning notebook sends it."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {
        "input_data": {"input_string": [{"role": "user", "content": "What is LoRA?"}],
                       "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}},
        "params": {}}})
    shape: ClassVar[str] = "a JSON object"
    expected: ClassVar[str] = ('{"input_data": {"input_string": [{"role": "user", "content": "..."}], "parameters": '
                               '{"temperature": 0.6, "top_p": 0.9, "do_sample": true, "max_new_tokens": 200}}, '
                               '"params": {}}')
    input_data: ScoringInput = Field(description="must be an object")
    params: dict[str, Any] = Field(default_factory=dict, description="must be an object")


class ScoreAnswer(Contract):
    """What a chat deployment answers."""

    model_config = ConfigDict(json_schema_extra={"example": {"output": "LoRA trains small low-rank matrices."}})
    output: str


# ---------------------------------------------------------------------------- OpenAI Chat Completions


class TextPart(Contract):
    shape: ClassVar[str] = 'a text part {"type": "text", "text": "..."}: images, audio and files are not supported'
    type: Literal["text"] = Field(description='must be "text": images, audio and files are not supported')
    text: str = Field(description="must be a string")


class ChatMessage(Contract):
    model_config = ConfigDict(extra="ignore")
    shape: ClassVar[str] = "an object {role, content}"
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="must be one of " + ", ".join(CHAT_ROLES) + " (tool messages are not supported; developer "
                                                                 "is taken as system)")
    content: str | list[TextPart] = Field(description="must be a string or a list of text parts")


class StreamOptions(Contract):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(False, description="must be true or false")


class ResponseFormat(Contract):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"] = Field(description='must be "text": structured output is not supported')


StopText = Annotated[str, Field(min_length=1)]
_STOP = f"must be a non-empty string or a list of up to {MAX_STOP_SEQUENCES} of them"


def _refused(why: str) -> Any:
    return Field(None, description=f"is set: {why} by this API")


class ChatCompletionRequest(Contract):
    """OpenAI Chat Completions, translated to the scoring request: `messages` become `input_string`;
    `temperature` (0 decodes greedily, above 0 samples), `top_p` and `max_completion_tokens`/`max_tokens` become
    generation parameters (left out: the model's defaults). `stop` sequences cut the answer. A parameter the
    deployments cannot honour is refused with 400 naming it (`param`) unless it has its no-op value; fields that
    do not change the answer (`user`, `metadata`, `store`, `service_tier`, `parallel_tool_calls`, ...) are
    ignored."""

    model_config = ConfigDict(extra="ignore")
    shape: ClassVar[str] = "a JSON object"
    expected: ClassVar[str] = ('an OpenAI Chat Completions request: {"model": "<model>", "messages": [{"role": "user", '
                               '"content": "..."}], "temperature": 0.6, "top_p": 0.9, "max_tokens": 200}')
    model: str = Field(min_length=1, description="is required: a deployed model name or run id (see GET "
                                                 "/api/v1/models)")
    messages: list[ChatMessage] = Field(min_length=1, description="must be a non-empty list of {role, content}")
    temperature: float | None = Field(None, ge=0, le=2, description="must be at least 0 and at most 2")
    top_p: float | None = Field(None, ge=0, le=1, description="must be at least 0 and at most 1")
    max_tokens: Tokens | None = Field(None, description=_TOKENS)
    max_completion_tokens: Tokens | None = Field(None, description=_TOKENS)
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_SEQUENCES)] | None = Field(
        None, description=_STOP)
    n: OnlyOne | None = Field(None, description="must be 1: one choice per request")
    stream: bool | None = Field(None, description="must be true or false")
    stream_options: StreamOptions | None = Field(None, description='must be an object {"include_usage": true|false}')
    response_format: ResponseFormat | None = Field(
        None, description='must be {"type": "text"} or left out: structured output is not supported')
    logprobs: Literal[False] | None = Field(
        None, description="must be false or left out: log probabilities are not available")
    # OpenAI parameters the deployments cannot honour: a request using one is refused (400 naming it in `param`)
    # rather than half answered; each one's no-op form ({}, [], 0, "none", null) is accepted.
    top_logprobs: Annotated[int, Field(ge=0, le=0), _Whole] | None = Field(
        None, description="must be 0 or left out: log probabilities are not available")
    logit_bias: Annotated[dict[str, Any], Field(max_length=0)] | None = Field(
        None, description="must be {} or left out: the deployments cannot bias token logits")
    frequency_penalty: Annotated[float, Field(ge=0, le=0)] | None = Field(
        None, description="must be 0 or left out: the deployments have no frequency penalty")
    presence_penalty: Annotated[float, Field(ge=0, le=0)] | None = Field(
        None, description="must be 0 or left out: the deployments have no presence penalty")
    seed: None = Field(None, description="must be null or left out: the deployments take no seed (for answers that "
                                         "repeat, send temperature 0: it decodes greedily)")
    tools: Annotated[list[Any], Field(max_length=0)] | None = Field(
        None, description="must be [] or left out: tools are not supported")
    tool_choice: Literal["none"] | None = Field(
        None, description='must be "none" or left out: tools are not supported')
    functions: Annotated[list[Any], Field(max_length=0)] | None = Field(
        None, description="must be [] or left out: functions are not supported")
    function_call: Literal["none"] | None = Field(
        None, description='must be "none" or left out: functions are not supported')
    modalities: list[Literal["text"]] | None = Field(
        None, description='must be ["text"] or left out: only text output is supported')
    audio: None = _refused("audio output is not supported")
    prediction: None = _refused("predicted outputs are not supported")
    web_search_options: None = _refused("web search is not supported")
    reasoning_effort: None = Field(None, description="must be null or left out: the deployments are not "
                                                     "reasoning models")
    verbosity: None = _refused("verbosity is not supported")


class Usage(Contract):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(Contract):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(Contract):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(Contract):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = Field(None, description="Present when the deployment reports token counts.")


class Delta(Contract):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Contract):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(Contract):
    """One server-sent `chat.completion.chunk` event; the last one carries only `usage` when it was asked for."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(Contract):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chatft"


class ModelList(Contract):
    """Each registered model name with a Deployed run (its newest run serves it), then the run ids of Deployed runs
    not listed by name."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(Contract):
    message: str
    type: Literal["invalid_request_error", "api_error"]
    param: str | None = Field(None, description="The request parameter at fault (e.g. `n`, `messages`), as OpenAI "
                                                "names it; null when the error is not about one parameter.")
    code: str


class OpenAIError(Contract):
    error: OpenAIErrorDetail


class ErrorDetail(Contract):
    code: str = Field(description="Stable error code, e.g. model_retired.")
    message: str = Field(description="What is wrong and what to do.")


class Error(Contract):
    error: ErrorDetail


# ------------------------------------------------------------------------------------------ run view


class Step(Contract):
    state: str
    at: str
    detail: str = ""
    kind: Literal["retry", "traffic"] | None = Field(None, description="Set on a line that is not a move: "
                                                     "`retry`, a step that failed transiently, tried again after "
                                                     "`delay_seconds`; `traffic`, a change of a model line's live "
                                                     "traffic (the shares in `detail`).")
    delay_seconds: float | None = None


class UploadView(Contract):
    container: str | None = None
    blob: str | None = None
    size: int | None = None


class JobView(Contract):
    name: str
    status: str


class ModelView(Contract):
    name: str
    version: str
    id: str


class EndpointView(Contract):
    name: str
    deployment: str
    scoring_uri: str
    last_used_at: str | None
    keep: bool


class FailureView(Contract):
    stage: str
    reason: str


class ChampionComparison(Contract):
    """A new version of a model line (the challenger) against the line's version in service (the champion), on
    the challenger's test split in the same evaluation: deployed only if not worse (shared/quality_gate.py)."""

    run_id: str = Field(description="The champion's run.")
    model_id: str = Field(description="The champion's registered model.")
    model_version: str | None = None
    metric: str
    records: int
    champion: float | None = Field(description="The metric's mean for the version in service.")
    tuned: float | None = Field(description="The metric's mean for the new version.")
    improvement: float | None = Field(description="Mean per-record improvement over the champion (positive: the "
                                                  "new version is better).")
    low: float | None
    high: float | None
    verdict: Literal["better", "worse", "inconclusive", "undecided"]
    deploy: bool = Field(description="Whether this comparison lets the new version be deployed (not worse).")
    reason: str
    metrics: dict[str, Any] | None = Field(None, description="Champion against tuned on every metric computed.")


class EvaluationView(Contract):
    """The quality gate's decision: the fine-tune against its base model on the test split (shared/quality_gate.py)."""

    gate: str = Field(description="EVAL_GATE (or the upload's eval_gate): enforce, report or off.")
    metric: str = Field(description="The metric decided on (EVAL_METRIC).")
    higher_is_better: bool
    records: int = Field(description="Paired test records the decision rests on.")
    base: float | None = Field(description="The metric's mean for the base model.")
    tuned: float | None = Field(description="The metric's mean for the fine-tuned model.")
    improvement: float | None = Field(description="Mean per-record improvement (positive: the fine-tune is better).")
    low: float | None = Field(description="Lower bound of the improvement's 95% paired-bootstrap interval.")
    high: float | None = Field(description="Upper bound of that interval.")
    min_improvement: float
    verdict: Literal["better", "worse", "inconclusive", "undecided"]
    deploy: bool = Field(description="Whether the gate let the model be deployed (false: the run is Held).")
    reason: str
    metrics: dict[str, Any] | None = Field(None, description="Base and tuned means of every metric computed.")
    report_path: str | None = Field(None, description="The evaluation report in RUNS_CONTAINER (with samples).")
    deployed_by_choice: str | None = Field(None, description="When a person deployed the Held run anyway.")
    champion: ChampionComparison | None = Field(None, description="A new version of a model line against the "
                                                                  "line's version in service (null: none to face).")


class RunLineView(Contract):
    """The model line a run belongs to, and its rollout there (`shared.rollout`)."""

    name: str
    standby_until: str | None = Field(None, description="The run's deployment is kept at 0% for a rollback until "
                                                        "then; deleted at that time.")
    rollout: dict[str, Any] = Field(default_factory=dict, description="previous (the deployment it replaces), "
                                    "previous_run, canary_percent, canary_started_at, verdict (the figures it was "
                                    "judged on: requests, errors, latency_ms_total, healthy).")


class RunView(Contract):
    """A run's status, as `GET /api/runs` shows it. Endpoint keys are never kept on a run, and fields are listed
    one by one so nothing new appears unreviewed."""

    run_id: str
    state: str
    created_at: str
    updated_at: str
    history: list[Step]
    upload: UploadView
    report: ValidationReport | None = Field(description="The validation report, its issue lists capped (the full "
                                                        "report is `report_path` in RUNS_CONTAINER); null before "
                                                        "the upload is validated.")
    job: JobView | None
    metrics: dict[str, Any]
    evaluation: EvaluationView | None = None
    model: ModelView | None
    endpoint: EndpointView | None
    failure: FailureView | None
    reconciled_at: str | None = Field(None, description="When the reconciler last checked the run with the "
                                                        "backend.")
    line: RunLineView | None = Field(None, description="The model line the run belongs to; null for a root upload.")
    links: dict[str, str]


class RunList(Contract):
    runs: list[RunView]
    count: int


# ------------------------------------------------------------------------------------------ model lines


class LineDeployment(Contract):
    name: str = Field(description="The deployment, `v<model version>` (`v01`).")
    traffic: int = Field(description="Its share of the line's live traffic, percent.")
    provisioning_state: str
    model_version: str
    run_id: str = Field(description="The run behind the deployment (\"\" when none is known).")
    run_state: str
    standby_until: str = Field(description="Kept at 0% for a rollback until then (ISO time); \"\" when not kept.")
    served: dict[str, Any] = Field(description="What the scoring proxy saw of it: requests, errors, "
                                               "latency_ms_total (cumulative).")


class LineView(Contract):
    line: str
    endpoint: str = Field(description="The line's endpoint, `ln-<line>`.")
    provisioning_state: str
    traffic: dict[str, int]
    deployments: list[LineDeployment]
    versions: list[str] = Field(description="Every model version a run of the line registered.")
    runs: list[dict[str, Any]] = Field(description="The line's runs, newest first: run_id, state, model_version.")


class LineList(Contract):
    lines: list[dict[str, Any]] = Field(description="Each line as `LineView` shows it (or `error` when its "
                                                    "endpoint could not be read).")


class Rollback(Contract):
    line: str
    endpoint: str
    traffic: dict[str, int] = Field(description="The line's live traffic after the rollback.")
    serving: str = Field(description="The deployment serving the line again.")
    serving_run: str
    rolled_back: str = Field(description="The deployment taken out of service (deleted).")
    rolled_back_run: str


# ------------------------------------------------------------------------------ evaluation report


class MetricSummary(Contract):
    """One metric of both models: means over the records it was computed on."""

    base: float | None
    tuned: float | None
    records: int = Field(ge=0)
    higher_is_better: bool
    base_token_weighted: float | None = Field(None, description="eval_loss only: weighted by assistant tokens, "
                                                                "as the trainer reports it.")
    tuned_token_weighted: float | None = None
    champion: float | None = Field(None, description="A model line's version in service, where it was scored.")
    champion_token_weighted: float | None = None


class PairedScores(Contract):
    """Per-record values of one metric, paired by position (null: not a number, e.g. a diverged loss)."""

    base: list[float | None]
    tuned: list[float | None]
    champion: list[float | None] | None = Field(None, description="The line's version in service, on the same "
                                                                  "records (a new version of a model line only).")


class EvaluationSample(Contract):
    prompt: str = Field(description="The last turn before the reference answer.")
    reference: str
    base: str
    tuned: str
    champion: str | None = None


class ChampionView(Contract):
    """The model line's version in service that a new version was scored beside (its run, its registered model)."""

    model: str = Field(description="Where the evaluation read it (a mounted folder, a local path).")
    run_id: str = ""
    model_id: str = Field("", description="Its registered model, e.g. azureml:<name>:<version>.")


class EvaluationLimitsView(Contract):
    max_records: int
    samples: int
    max_new_tokens: int
    max_length: int


class EvaluationReport(Contract):
    """`RUNS_CONTAINER/<run_id>/evaluation.json`, written by the evaluation (`evaluation/`, locally in the
    workspace's job process, in Azure by the evaluation command job) and read by the quality gate."""

    version: Literal[1]
    run_id: str
    base_model: str
    tuned_model: str
    champion: ChampionView | None = Field(None, description="A new version of a model line: the version in service, "
                                                            "scored beside base and tuned on the same records.")
    records: int = Field(ge=0, description="Test records scored by loss, paired (both models).")
    sampled: int = Field(ge=0, description="Test prompts both models answered.")
    tokens: int = Field(ge=0, description="Tokens scored or generated, both models together.")
    device: str
    seconds: float
    limits: EvaluationLimitsView
    metrics: dict[str, MetricSummary]
    per_record: dict[str, PairedScores]
    samples: list[EvaluationSample]


# ------------------------------------------------------------------------------------- problems


class Problem(ValueError):
    """A request did not match its contract: `problems` are `(param, text)` pairs, `text` naming where and why."""

    def __init__(self, problems: list[tuple[str, str]], expected: str):
        self.problems = problems
        shown = [text for _, text in problems[:MAX_PROBLEMS]]
        more = len(problems) - len(shown)
        super().__init__("; ".join(shown) + (f"; and {more} more" if more > 0 else "") + f". Expected {expected}")

    @property
    def param(self) -> str | None:
        """The first offending parameter, as OpenAI names it (`messages`, `n`, ...)."""
        return self.problems[0][0] or None if self.problems else None


M = typing.TypeVar("M", bound=Contract)


def parse(model: type[M], doc: Any) -> M:
    """`doc` (parsed JSON) as `model`; `Problem` names each field that does not match, with its rule."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        found: list[tuple[str, str]] = []
        for error in exc.errors(include_url=False, include_input=False, include_context=False):
            problem = _describe(model, error["loc"], error["type"])
            if problem not in found:
                found.append(problem)
        raise Problem(found, getattr(model, "expected", model.shape)) from None


def _describe(model: type[Contract], loc: tuple[Any, ...], kind: str) -> tuple[str, str]:
    """`(top-level field, "<where> <rule>")` for one pydantic error: the rule of the deepest field it lies under."""
    node: Any = model
    where, rule = "", f"must be {model.shape}"
    for seg in loc:
        node = _strip(node, seg)
        if isinstance(seg, str) and isinstance(node, type) and issubclass(node, Contract) and seg in node.model_fields:
            info = node.model_fields[seg]
            where = f"{where}.{seg}" if where else seg
            rule, node = info.description or "is not valid", info.annotation
        elif isinstance(seg, int) and typing.get_origin(node) is list:
            node = _strip(typing.get_args(node)[0], None)
            if isinstance(node, type) and issubclass(node, Contract):
                where, rule = f"{where}[{seg}]", f"must be {node.shape}"
        # anything else is a union member's tag: stay on the field
    if kind == "missing" and not rule.startswith("is required"):
        rule = f"is required and {rule}"
    return (str(loc[0]) if loc else ""), f"{where or 'the body'} {rule}"


def _strip(node: Any, seg: Any) -> Any:
    """Unwrap Annotated and Optional; for a union tag, the member it names."""
    while True:
        if typing.get_origin(node) is Annotated:
            node = typing.get_args(node)[0]
            continue
        if typing.get_origin(node) in (Union, types.UnionType):
            members = [m for m in typing.get_args(node) if m is not type(None)]
            if len(members) == 1:
                node = members[0]
                continue
            if isinstance(seg, str):  # a union tag: pick the member it names
                for m in members:
                    inner = typing.get_args(m)[0] if typing.get_origin(m) is Annotated else m
                    name = getattr(inner, "__name__", "")
                    if (typing.get_origin(inner) is list and seg.startswith("list[")) or (name and name in seg
                                                                                         and name != "str"):
                        return inner
        return node
