"""A cascade model as the cache's cross-checker, offline: score many question pairs through vLLM.

Serving asks the Scout or Validator deployment one pair at a time (`serving.cache.verifier.EngineVerifier`);
calibration (`infopt calibrate cache`) and `scripts/eval_cache.py --frontier` need thousands of pairs scored
with the very same prompt and reading (`cross_check_messages`, `cross_check_score`), so they load the model in
vLLM here, in a child process (its engine's memory and threads are gone when it returns).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _worker(model_path: str, chats: list, out: str) -> None:
    import numpy as np

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    from vllm import LLM, SamplingParams

    from serving.cache.verifier import CROSS_CHECK_TOP_LOGPROBS, cross_check_score

    llm = LLM(model=model_path, dtype="bfloat16", enforce_eager=True, max_model_len=1024, max_num_seqs=16)
    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=CROSS_CHECK_TOP_LOGPROBS)
    started = time.perf_counter()
    outs = llm.chat(chats, params, use_tqdm=True)
    seconds = time.perf_counter() - started
    scores = [cross_check_score({tok.decode([t]): lp.logprob for t, lp in o.outputs[0].logprobs[0].items()})
              for o in outs]
    np.save(out, np.array(scores, dtype=float))
    Path(out).with_suffix(".json").write_text(json.dumps({
        "model": model_path, "pairs": len(chats), "seconds": seconds,
        "prompt_tokens": float(np.mean([len(o.prompt_token_ids) for o in outs])) if outs else 0.0}))
    # The results are on disk. Stop the engine's own processes, then leave at once: a normal exit joins them
    # before their finalizer stops them, and after a long run that join never returned (vLLM 0.32 on CPU).
    with contextlib.suppress(Exception):  # leaving anyway
        llm.llm_engine.engine_core.shutdown(timeout=30)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def score_pairs(model_path: str, pairs: Sequence[tuple[str, str]], cache_file: Path) -> tuple[Any, dict]:
    """P(same question) for each (cached, new) pair, and what it cost (pairs, seconds, mean prompt tokens).

    The scores are kept in `cache_file` (.npy, with a .json beside it) so that a re-run does not score again:
    name it after the model and the pairs."""
    import numpy as np

    from serving.cache.verifier import cross_check_messages

    cache_file = Path(cache_file)
    if not cache_file.exists():
        if not pairs:
            return np.zeros(0), {"model": model_path, "pairs": 0, "seconds": 0.0, "prompt_tokens": 0.0}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        proc = mp.get_context("spawn").Process(
            target=_worker, args=(model_path, [cross_check_messages(a, b) for a, b in pairs], str(cache_file)))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"scoring pairs with {model_path} failed (exit {proc.exitcode})")
    scores = np.load(cache_file)
    if len(scores) != len(pairs):
        raise ValueError(f"{cache_file} holds {len(scores)} scores for {len(pairs)} pairs: remove it to score again")
    return scores, json.loads(cache_file.with_suffix(".json").read_text())
