"""Both store backends behave the same: real qdrant-edge in a temp folder, real qdrant-client in memory."""

from __future__ import annotations

import pytest

from serving.cache.edge import EdgeStore
from serving.cache.keys import digest
from serving.cache.qdrant_server import QdrantServerStore
from serving.cache.store import CacheEntry, Match, Selector, StoreError, entry_id

DIM = 8


def vec(i: int) -> list[float]:
    v = [0.0] * DIM
    v[i % DIM] = 1.0
    return v


def entry(n: int, **kw) -> CacheEntry:
    base = dict(
        namespace="default", model="auto", fingerprint="fp", exact=digest(["q", n]), context="ctx", params="p",
        question=f"question {n}", answer=f"answer {n}", finish_reason="stop", prompt_tokens=3, completion_tokens=2,
        tier="validator", engine_model="large", confidence=None, created_at=100.0 + n, expires_at=10_000.0,
        last_hit_at=100.0 + n, hits=0, tags=[],
    )
    base.update(kw)
    return CacheEntry(**base)


def match(**kw) -> Match:
    base = dict(namespace="default", model="auto", fingerprint="fp", context="ctx", params="p", now=500.0)
    base.update(kw)
    return Match(**base)


@pytest.fixture(params=["edge", "client"])
def store(request, tmp_path):
    s = EdgeStore(tmp_path / "shard", DIM) if request.param == "edge" else QdrantServerStore(DIM, location=":memory:")
    yield s
    s.close()


def test_upsert_get_and_replace_by_exact_key(store):
    e = entry(1)
    store.upsert([(e, vec(1))])
    assert [x.answer for x in store.get([e.id])] == ["answer 1"]
    store.upsert([(entry(1, answer="newer"), vec(1))])  # same exact key: same id, replaced
    assert store.count() == 1
    assert store.get([entry_id(e.exact)])[0].answer == "newer"
    assert store.get([entry(2).id]) == []


def test_search_matches_only_the_same_namespace_model_context_params_and_live_entries(store):
    store.upsert([
        (entry(1), vec(1)),
        (entry(2, namespace="other"), vec(1)),
        (entry(3, context="other-ctx"), vec(1)),
        (entry(4, params="other-p"), vec(1)),
        (entry(5, model="validator"), vec(1)),
        (entry(6, fingerprint="fp2"), vec(1)),
        (entry(7, expires_at=400.0), vec(1)),  # expired at now=500
        (entry(8, question=None), vec(1)),  # exact-only
    ])
    found = store.search(vec(1), match(), limit=10, threshold=0.5)
    assert [(e.answer, round(s, 3)) for e, s in found] == [("answer 1", 1.0)]
    assert store.search(vec(2), match(), limit=10, threshold=0.5) == []  # orthogonal: below threshold


def test_delete_by_selector(store):
    store.upsert([
        (entry(1, namespace="a", tags=["faq"]), vec(1)),
        (entry(2, namespace="a", engine_model="small", tier="scout"), vec(2)),
        (entry(3, namespace="b", created_at=10.0), vec(3)),
        (entry(4, namespace="b", expires_at=50.0), vec(4)),
    ])
    assert store.namespaces() == {"a": 2, "b": 2}
    assert store.delete(Selector(tag="faq")) == 1
    assert store.delete(Selector(model="small")) == 1  # the engine model matches too
    assert store.namespaces() == {"b": 2}  # an emptied namespace is gone from the stats
    assert store.delete(Selector(older_than=20.0)) == 1
    assert store.delete(Selector(expired_at=60.0)) == 1
    assert store.count() == 0
    store.upsert([(entry(5), vec(5)), (entry(6), vec(6))])
    assert store.delete(Selector()) == 2 and store.count() == 0


def test_least_recently_hit_order_and_hits(store):
    store.upsert([(entry(i), vec(i)) for i in range(4)])  # last_hit_at 100..103
    e0 = store.get([entry(0).id])[0]
    store.record_hit(e0, now=200.0)
    assert store.get([e0.id])[0].hits == 1
    assert store.least_recently_hit("default", 2) == [entry(1).id, entry(2).id]


def test_set_fields_overwrites_only_those_fields_and_keeps_the_vector(store):
    store.upsert([(entry(1), vec(1)), (entry(2), vec(2))])
    store.set_fields(entry(1).id, {"min_similarity": 0.93, "min_score": None})
    got = store.get([entry(1).id])[0]
    assert (got.min_similarity, got.min_score, got.answer, got.hits) == (0.93, None, "answer 1", 0)
    assert store.get([entry(2).id])[0].min_similarity is None
    match = Match(namespace="default", model="auto", fingerprint="fp", context="ctx", params="p", now=500.0)
    assert [e.id for e, _ in store.search(vec(1), match, 1, 0.99)] == [entry(1).id]  # still found by its vector


def test_edge_store_persists_across_reopen_and_locks_its_folder(tmp_path):
    s = EdgeStore(tmp_path / "shard", DIM)
    s.upsert([(entry(i), vec(i)) for i in range(5)])
    with pytest.raises(StoreError, match="cannot open"):
        EdgeStore(tmp_path / "shard", DIM, open_timeout_s=0.5)  # one owner per folder
    s.close()
    again = EdgeStore(tmp_path / "shard", DIM)
    assert again.count() == 5
    assert again.search(vec(3), match(), limit=1, threshold=0.9)[0][0].answer == "answer 3"
    again.close()


def test_edge_store_keeps_every_admitted_entry_through_a_crash(tmp_path):
    """The durability the cache states (docs/reliability.md): an upsert is in the write-ahead log when it returns,
    so a process killed without flush or close (SIGKILL, OOM) loses no admitted entry; its lock dies with it."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_admit_then_die, args=(str(tmp_path / "shard"), 40))
    child.start()
    child.join(120)
    assert child.exitcode == 9  # it never flushed or closed
    store = EdgeStore(tmp_path / "shard", DIM)
    assert store.count() == 40
    assert [e.answer for e in store.get([entry_id(entry(i).exact) for i in (0, 39)])] == ["answer 0", "answer 39"]
    store.close()


def _admit_then_die(path: str, n: int) -> None:
    import os

    store = EdgeStore(path, DIM)
    for i in range(n):  # one admission at a time, as the cache admits
        store.upsert([(entry(i), vec(i))])
    os._exit(9)
