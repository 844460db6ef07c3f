"""In-engine speculative decoding changes nothing but speed: greedy output on vs off, token for token.

The tiny profile's Validator (Qwen2.5-Coder-0.5B, float32, eager: exact text) answers 30
varied prompts with speculation off and with each method on; every answer must be the
same token ids. vLLM's counters show that speculation really ran (drafts were proposed).
Each engine runs in a process of its own (tests/serve/spec_worker.py).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import load_profile
from tests.serve.conftest import require_models
from tests.serve.test_tiered_app import VERIFY_PROMPTS

pytestmark = pytest.mark.serve

PROMPTS = [*VERIFY_PROMPTS, "Repeat after me: one two three, one two three, one two three.",
           "Write a Python list of the numbers 1 to 10.", "Spell the word banana letter by letter.",
           "Write a for loop in C that prints 0 to 9."]
MAX_TOKENS = 24
WORKER = Path(__file__).with_name("spec_worker.py")


def generate(spec: dict, tmp_path: Path) -> dict:
    out = tmp_path / f"{spec.get('method', 'none')}.json"
    subprocess.run([sys.executable, str(WORKER), json.dumps(spec), json.dumps(PROMPTS), str(MAX_TOKENS), str(out)],
                   check=True, timeout=600, capture_output=True)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    require_models(load_profile("tiny"))
    return generate({"method": "none"}, tmp_path_factory.mktemp("spec"))


@pytest.mark.parametrize("spec", [
    # n-grams of the prompt; the Scout (SmolLM2, another vocabulary) as draft model through vLLM's
    # heterogeneous-vocabulary mode; suffix decoding (arctic-inference).
    {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4},
    {"method": "draft_model", "num_speculative_tokens": 4, "heterogeneous_vocab": True},
    {"method": "suffix", "num_speculative_tokens": 4},
], ids=lambda s: s["method"])
def test_greedy_output_is_identical_with_speculation_on(spec, baseline, tmp_path):
    if spec["method"] == "suffix" and importlib.util.find_spec("arctic_inference") is None:
        pytest.skip("suffix decoding needs arctic-inference, a source build with no wheel for this platform "
                    "(the optional extra inference-optimizer[suffix]: pip install -e '.[suffix]')")
    assert len(PROMPTS) >= 30
    # max_concurrency above the batch: speculation stays on for the 30 prompts batched together.
    on = generate({**spec, "max_concurrency": None}, tmp_path)
    for prompt, a, b in zip(PROMPTS, baseline["tokens"], on["tokens"], strict=True):
        assert a == b, prompt
    assert on["spec"].get("vllm:spec_decode_num_draft_tokens", 0) > 0, on["spec"]  # it really speculated
    assert baseline["spec"].get("vllm:spec_decode_num_draft_tokens", 0) == 0
