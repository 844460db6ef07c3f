import asyncio
import json
import math

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from serving.api import ChatCompletionRequest, CompletionRequest
from serving.config import ApiConfig, TieringConfig
from serving.engines.base import GenerationChunk
from serving.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    UnsupportedParameterError,
    to_openai_error,
)
from serving.pipeline import build_pipeline
from serving.service import OpenAIService, parse_request
from tests.unit.fakes import FakeEngine

SURE = [math.log(0.99)] * 3
UNSURE = [math.log(0.01)] * 3


def service(scout_lp=SURE, validator_fail=False) -> OpenAIService:
    scout = FakeEngine("small", ["A", "B", "C"], scout_lp)
    validator = FakeEngine("large", ["x", "y", "z"], fail=validator_fail)
    pipeline = build_pipeline(scout, validator, TieringConfig(threshold=0.5))
    return OpenAIService(pipeline, ApiConfig(max_tokens_limit=64, default_max_tokens=16), scout, validator)


def chat(**kw) -> ChatCompletionRequest:
    body = {"messages": [{"role": "user", "content": "hi"}], **kw}
    return parse_request(ChatCompletionRequest, body)


def error_of(body, model=ChatCompletionRequest):
    with pytest.raises(InvalidRequestError) as info:
        parse_request(model, body)
    return info.value


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({}, "messages", "required"),
        ({"messages": []}, "messages", "at least one"),
        ({"messages": "hi"}, "messages", "invalid value"),
        ({"messages": [{"role": "user"}]}, "messages.0.content", "required"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "invalid value"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature", "invalid value"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature", "invalid value"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens", "invalid value"),
        ({"messages": [{"role": "user", "content": "x"}], "frobnicate": 1}, "frobnicate", "Unrecognized"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "n", "invalid value"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 65}, "n", "invalid value"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2, "strategy": {"name": "majority_vote"}}, "n", "n=1"),
        ({"messages": [{"role": "user", "content": "x"}], "strategy": {"name": "vote"}}, "strategy.name",
         "invalid value"),
        ({"messages": [{"role": "user", "content": "x"}], "strategy": {"name": "best_of_n", "n": 0}}, "strategy.n",
         "invalid value"),
        ({"messages": [{"role": "user", "content": "x"}], "strategy": {"name": "best_of_n", "budget": -1}},
         "strategy.budget", "invalid value"),
        ({"messages": [{"role": "user", "content": "x"}], "strategy": {"name": "search", "depth": 3}},
         "strategy.depth", "Unrecognized"),
        ({"messages": [{"role": "user", "content": "x"}], "strategy": "best_of_n"}, "strategy", "invalid value"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "strategy": {"name": "majority_vote"}},
         "logprobs", "strategy"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools", "tool"),
        ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}}, "logit_bias", "logit_bias"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
         "messages.content", "image_url"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs", "logprobs"),
    ],
)
def test_bad_chat_requests_name_the_field(body, param, fragment):
    err = error_of(body)
    assert err.param == param
    assert fragment in err.message
    assert to_openai_error(err)[0] == 400


def test_unsupported_parameters_have_their_own_code():
    err = error_of({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}})
    assert isinstance(err, UnsupportedParameterError)
    assert to_openai_error(err)[1]["error"]["code"] == "unsupported_parameter"


def test_non_object_body_is_rejected():
    assert "JSON object" in error_of([1, 2]).message


def test_bad_completion_requests():
    assert error_of({"prompt": ["a", "b"]}, CompletionRequest).param == "prompt"
    assert error_of({"prompt": "a", "echo": True}, CompletionRequest).param == "echo"
    assert error_of({"prompt": "a", "logprobs": 9}, CompletionRequest).param == "logprobs"
    assert error_of({}, CompletionRequest).param == "prompt"


def test_max_tokens_limit_and_default():
    svc = service()
    with pytest.raises(InvalidRequestError) as info:
        svc.chat_request(chat(max_tokens=65))
    assert info.value.param == "max_tokens" and "64" in info.value.message
    assert svc.chat_request(chat()).max_tokens == 16
    assert svc.chat_request(chat(max_completion_tokens=7)).max_tokens == 7


def test_too_many_stop_sequences():
    with pytest.raises(InvalidRequestError):
        service().chat_request(chat(stop=["a", "b", "c", "d", "e"]))


def test_unknown_model_is_404():
    with pytest.raises(ModelNotFoundError) as info:
        asyncio.run(service().chat(chat(model="gpt-17")))
    assert to_openai_error(info.value)[0] == 404


def test_engine_model_names_force_their_tier():
    _body, trace = asyncio.run(service(UNSURE).chat(chat(model="small")))
    assert trace.tier == "scout" and trace.reason == "forced"


def test_chat_response_is_a_valid_openai_object_with_route():
    body, _trace = asyncio.run(service(SURE).chat(chat(temperature=0)))
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == "ABC"
    assert body["route"]["tier"] == "scout"
    assert parsed.usage.completion_tokens == 3


def test_completion_response_is_a_valid_openai_object():
    req = parse_request(CompletionRequest, {"prompt": "x", "logprobs": 1})
    body, trace = asyncio.run(service(UNSURE).completion(req))
    parsed = Completion.model_validate(body)
    assert parsed.choices[0].text == "xyz"
    assert trace.tier == "validator"


def stream(svc: OpenAIService, req: ChatCompletionRequest):
    """The SSE lines of a streamed chat, and its route as known when the headers were sent."""
    async def go():
        events, trace = await svc.chat_stream(req)
        return [e async for e in events], trace
    return asyncio.run(go())


@pytest.mark.parametrize("scout_lp", [SURE, UNSURE])
def test_stream_events_assemble_to_the_answer_and_end_with_route_and_done(scout_lp):
    svc = service(scout_lp)
    lines, trace = stream(svc, chat(stream=True, stream_options={"include_usage": True}))
    assert lines[-1] == "data: [DONE]\n\n"
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    chunks = [ChatCompletionChunk.model_validate(p) for p in payloads]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ("ABC" if scout_lp is SURE else "xyz")
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [p for p in payloads if p["choices"] and p["choices"][0].get("finish_reason")]
    assert len(finals) == 1 and finals[0]["route"]["tier"] == trace.tier
    assert payloads[-1]["usage"]["completion_tokens"] == 3


class DiesMidStream(FakeEngine):
    """Sends its first token, then fails (an engine replica dying mid-answer)."""

    async def stream(self, request):
        self.requests.append(request)
        yield GenerationChunk(text=self.tokens[0])
        raise EngineUnavailableError(f"{self.model_id} is down")


def test_stream_error_after_headers_is_sent_as_an_event():
    validator = DiesMidStream("large", ["x", "y", "z"])
    scout = FakeEngine("small", ["A", "B", "C"], UNSURE)
    svc = OpenAIService(build_pipeline(scout, validator, TieringConfig(threshold=0.5)), ApiConfig(), scout, validator)
    lines, trace = stream(svc, chat(stream=True))
    assert trace.tier == "validator"  # decided, headers sent, then the engine died
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["content"] == "x"
    err = json.loads(lines[-2][6:])
    assert lines[-1] == "data: [DONE]\n\n"
    assert err["error"]["type"] == "service_unavailable"
    assert err["route"]["stages"][-1]["decision"] == "failed"


def test_stream_error_before_the_first_chunk_is_an_http_error():
    """Nothing was sent yet: the error gets its own status, not a 200 with an error event."""
    svc = service(UNSURE, validator_fail=True)
    with pytest.raises(EngineUnavailableError) as info:
        stream(svc, chat(stream=True))
    assert to_openai_error(info.value)[0] == 503
    assert [(s.stage, s.decision) for s in info.value.route.stages] == [("scout", "escalate"), ("validator", "failed")]


def test_list_models_names_tiers_and_engines():
    ids = [m["id"] for m in service().list_models()["data"]]
    assert ids == ["auto", "scout", "validator", "small", "large"]


def test_serve_metrics_can_be_built():
    """Every Prometheus metric is valid for Ray Serve (e.g. no reserved tag such as 'deployment'):
    a bad one stops the Ingress replica from starting at all."""
    from serving.metrics import ServeMetrics

    m = ServeMetrics()  # Ray raises ValueError here for a reserved tag
    reserved = {"deployment", "replica", "application"}  # what Ray Serve rejects
    assert all(reserved.isdisjoint(v._tag_keys) for v in vars(m).values() if hasattr(v, "_tag_keys"))
    m.batch_params("Embedder", 8, 0.01)
    m.draft(4, 2, source="cache", saved=3)


@pytest.mark.parametrize(("field", "value"), [("max_tokens", True), ("temperature", "0.5"), ("stream", "yes"),
                                              ("top_p", [1]), ("seed", 1.5)])
def test_types_are_strict_no_coercion(field, value):
    """As OpenAI checks them: a boolean is not an integer, a string not a number (an int is still a float)."""
    with pytest.raises(InvalidRequestError) as info:
        chat(**{field: value})
    assert info.value.param == field and to_openai_error(info.value)[0] == 400
    assert chat(temperature=1).temperature == 1.0


def test_a_lone_surrogate_is_a_400_naming_the_field_not_a_500():
    body = json.loads('{"messages": [{"role": "user", "content": "hi \\ud800"}]}')
    with pytest.raises(InvalidRequestError) as info:
        parse_request(ChatCompletionRequest, body)
    assert info.value.param == "messages.0.content" and to_openai_error(info.value)[0] == 400
    # Any other Unicode, control characters included, is text like any other.
    ok = parse_request(ChatCompletionRequest, {"messages": [{"role": "user", "content": "hé \x00\x07 😀 \u202e"}]})
    assert ok.messages[0].content == "hé \x00\x07 😀 \u202e"


def test_a_prompt_over_the_limit_is_a_400_before_any_model_reads_it():
    svc = OpenAIService(build_pipeline(FakeEngine("small", ["a"]), FakeEngine("large", ["b"])),
                        ApiConfig(max_prompt_chars=1000), FakeEngine("small", ["a"]), FakeEngine("large", ["b"]))
    with pytest.raises(InvalidRequestError) as info:
        svc.chat_request(chat(messages=[{"role": "system", "content": "s" * 600},
                                        {"role": "user", "content": "u" * 600}]))
    assert info.value.param == "messages" and info.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequestError):
        svc.completion_request(parse_request(CompletionRequest, {"prompt": "p" * 1001}))
    assert svc.chat_request(chat(messages=[{"role": "user", "content": "u" * 1000}])).messages


def test_the_end_to_end_deadline_ends_a_request_with_a_504_and_a_stream_with_an_event():
    """api.request_timeout_s bounds a whole request (queue included); the work is cancelled at the deadline."""
    from serving.errors import EngineTimeoutError

    def slow_service(delay_s: float) -> tuple[OpenAIService, FakeEngine]:
        scout = FakeEngine("small", ["A", "B", "C"], SURE)
        validator = FakeEngine("large", ["x", "y", "z", "w"], delay_s=delay_s)  # per answer, or per streamed token
        svc = OpenAIService(build_pipeline(scout, validator, TieringConfig(threshold=0.5)),
                            ApiConfig(request_timeout_s=0.4), scout, validator)
        return svc, validator

    svc, _ = slow_service(0.6)
    with pytest.raises(EngineTimeoutError) as info:
        asyncio.run(svc.chat(chat(model="validator")))
    assert to_openai_error(info.value)[0] == 504 and "api.request_timeout_s" in info.value.message

    svc, _ = slow_service(0.15)
    lines, _ = stream(svc, chat(model="validator", stream=True))  # 4 tokens x 0.15 s > 0.4 s
    assert lines[-1] == "data: [DONE]\n\n"
    err = json.loads(lines[-2][6:])
    assert err["error"]["type"] == "timeout" and "api.request_timeout_s" in err["error"]["message"]
    assert 1 <= sum('"content"' in line for line in lines) < 4  # it started, and was cut at the deadline

    # Within the deadline nothing changes.
    fast = OpenAIService(build_pipeline(FakeEngine("s", ["A"]), FakeEngine("l", ["x"]), TieringConfig()),
                         ApiConfig(request_timeout_s=5), FakeEngine("s", ["A"]), FakeEngine("l", ["x"]))
    assert asyncio.run(fast.chat(chat(model="validator")))[1].tier == "validator"
