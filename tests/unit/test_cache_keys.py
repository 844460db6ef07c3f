from dataclasses import replace

from serving.cache.keys import cache_key
from serving.engines.base import GenerationRequest
from serving.policy.cache import is_deterministic, normalize


def chat(*turns: tuple[str, str], **kw) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": r, "content": c} for r, c in turns], temperature=0, **kw)


Q = ("user", "What is the capital of France?")
SYS = ("system", "You are terse.")


def key(req, **kw):
    return cache_key(req, model=kw.pop("model", "m"), namespace=kw.pop("namespace", "default"))


def test_normalize_folds_unicode_and_whitespace_but_not_case():
    assert normalize("  What\u00a0is\t\nit？ ") == "What is it?"
    assert normalize("US") != normalize("us")


def test_same_request_same_exact_key_despite_spacing():
    a = key(chat(SYS, Q))
    b = key(chat(("system", " You are  terse. "), ("user", "What is the capital of  France?")))
    assert a == b


def test_exact_key_changes_with_anything_that_changes_the_answer():
    base = chat(SYS, Q)
    k = key(base).exact
    assert key(replace(base, max_tokens=9)).exact != k
    assert key(replace(base, temperature=0.7)).exact != k
    assert key(replace(base, stop=["\n"])).exact != k
    assert key(base, model="other").exact != k
    assert key(base, namespace="tenant-b").exact != k
    assert key(chat(Q)).exact != k


def test_context_separates_the_question_from_the_conversation():
    plain, with_sys = key(chat(Q)), key(chat(SYS, Q))
    assert plain.question == with_sys.question == "What is the capital of France?"
    assert plain.context != with_sys.context
    earlier = key(chat(("user", "Talk about Italy."), ("assistant", "Italy is..."), Q))
    assert earlier.context not in (plain.context, with_sys.context)
    assert plain.params == with_sys.params


def test_no_question_when_the_last_turn_is_not_the_user():
    k = key(chat(Q, ("assistant", "Paris")))
    assert k.question is None


def test_completion_keys():
    a = key(GenerationRequest(prompt="def fib(n):", temperature=0))
    b = key(GenerationRequest(messages=[{"role": "user", "content": "def fib(n):"}], temperature=0))
    assert a.question == b.question and a.exact != b.exact and a.context != b.context


def test_order_of_stop_sequences_does_not_matter():
    assert key(chat(Q, stop=["a", "b"])).exact == key(chat(Q, stop=["b", "a"])).exact


def test_deterministic():
    assert is_deterministic(chat(Q))
    assert is_deterministic(replace(chat(Q), temperature=0.8, seed=3))
    assert not is_deterministic(replace(chat(Q), temperature=0.8))
