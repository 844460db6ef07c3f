"""Property tests of everything that reads a client's bytes: whatever arrives, the answer is a value or a
4xx `InferenceOptimizerError`, never another exception (which the Ingress would turn into a 500)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.api import ChatCompletionRequest, CompletionRequest
from serving.errors import InferenceOptimizerError, to_openai_error
from serving.policy import cache as cache_policy
from serving.service import parse_request, selector_from_query

# Any JSON value, strings with every code point JSON can spell (lone surrogates and controls included).
_TEXT = st.text(alphabet=st.characters(codec=None, blacklist_categories=()), max_size=40)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20,
)
_ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot", "", None])
_MESSAGE = st.fixed_dictionaries({"role": _ROLES, "content": _JSON | _TEXT})
_CHAT = st.fixed_dictionaries(
    {"messages": st.lists(_MESSAGE, max_size=3) | _JSON},
    optional={"model": _JSON, "max_tokens": _JSON, "temperature": _JSON, "top_p": _JSON, "stream": _JSON,
              "stop": _JSON, "seed": _JSON, "n": _JSON, "logprobs": _JSON, "top_logprobs": _JSON,
              "cache": st.fixed_dictionaries({}, optional={"namespace": _JSON, "mode": _JSON, "ttl_s": _JSON,
                                                          "tags": _JSON}) | _JSON,
              "stream_options": _JSON, "confidence_threshold": _JSON, "user": _JSON},
)
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _status(model, body) -> int:
    """200 when `body` parses into `model`, else the status of the error it raised (a non-package exception
    propagates and fails the test); the error's body must serialise."""
    try:
        parse_request(model, body)
    except InferenceOptimizerError as exc:
        status, payload = to_openai_error(exc)
        json.dumps(payload)
        return status
    return 200


@_SETTINGS
@given(_CHAT)
def test_any_chat_body_is_parsed_or_a_4xx(body):
    status = _status(ChatCompletionRequest, body)
    assert status == 200 or 400 <= status < 500, status


@_SETTINGS
@given(st.fixed_dictionaries({"prompt": _JSON}, optional={"max_tokens": _JSON, "logprobs": _JSON, "echo": _JSON,
                                                         "suffix": _JSON, "best_of": _JSON}))
def test_any_completion_body_is_parsed_or_a_4xx(body):
    status = _status(CompletionRequest, body)
    assert status == 200 or 400 <= status < 500, status


@_SETTINGS
@given(_JSON)
def test_any_json_document_is_parsed_or_a_4xx(body):
    status = _status(ChatCompletionRequest, body)
    assert status == 200 or 400 <= status < 500, status


@_SETTINGS
@given(st.dictionaries(st.sampled_from(["namespace", "model", "older_than_s", "tag", "all", "other"]), _TEXT))
def test_any_invalidation_query_is_a_selector_or_a_4xx(query):
    try:
        selector_from_query(query)
    except InferenceOptimizerError as exc:
        assert 400 <= to_openai_error(exc)[0] < 500


@_SETTINGS
@given(_TEXT)
def test_every_text_path_takes_any_unicode(text):
    """What the cache and the analyzer do with a question's text: never an exception, surrogates included."""
    assert isinstance(cache_policy.normalize(text), str)
    body = {"messages": [{"role": "user", "content": text}]}
    try:
        req = parse_request(ChatCompletionRequest, body)
    except InferenceOptimizerError as exc:  # a lone surrogate: a 400 naming the field
        assert to_openai_error(exc)[0] == 400 and exc.param == "messages.0.content", exc.param
        return
    normalized = cache_policy.normalize(req.messages[0].text())
    assert normalized.encode("utf-8").decode("utf-8") == normalized  # what the store and the embedder receive
