"""The tiered app on a CUDA GPU (skipped on machines without one, such as CI here).

Same path as tests/serve but with `device: gpu` engines: run it on a GPU node where the
`gpu` extra (CUDA vLLM) is installed and the tiny profile's models are prepared.
"""

from __future__ import annotations

import pytest

from tests.serve.conftest import deploy, free_port, require_models, start_ray, stop_ray

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU on this machine", allow_module_level=True)
vllm = pytest.importorskip("vllm", reason="vLLM is not installed")
if "cpu" in getattr(vllm, "__version__", "") or not hasattr(torch.version, "cuda") or torch.version.cuda is None:
    pytest.skip("this vLLM/PyTorch build has no CUDA support", allow_module_level=True)

pytestmark = pytest.mark.gpu


def test_tiny_pair_on_gpu_routes_and_answers(tmp_path):
    from serving.config import load_profile

    config = load_profile("tiny")
    config.cache.path = tmp_path / "semantic-cache"  # empty: the request below is a miss, never a hit
    for engine in (config.scout, config.validator):
        engine.device, engine.cpu_threads_bind, engine.gpu_memory_utilization = "gpu", None, 0.3
        engine.num_cpus = 1
    require_models(config)
    start_ray()
    try:
        svc = deploy(config, free_port())
        with svc.client() as c:
            r = c.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "temperature": 0, "max_tokens": 16})
            assert r.status_code == 200, r.text
            route = r.json()["route"]
            # A cache miss, so the Scout's confidence against the threshold decides the tier.
            confident = route["confidence"] >= route["threshold"]
            assert route["tier"] == ("scout" if confident else "validator"), route
            assert route["reason"] == ("confident" if confident else "escalated"), route
            assert [s["decision"] for s in route["stages"] if s["stage"] == "scout"] == [
                "confident" if confident else "escalate"], route
    finally:
        stop_ray()
