"""Greedy token ids of the tiny Validator with a given speculative config, in a process of its own.

    python tests/serve/spec_worker.py '<speculative config JSON>' '<prompts JSON>' <max_tokens> <out.json>

The engine is built from the project's own mapping (`llm_config_kwargs`), so what is tested
is what the Validator deployment runs. A process per engine: vLLM's engine state never
leaks into the test process (which also runs Ray).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    spec, prompts, max_tokens, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    from deployments.engines import llm_config_kwargs
    from serving.config import load_profile

    config = load_profile("tiny")
    engine = config.validator.model_copy(update={"speculative": config.validator.speculative.model_validate(spec)})
    draft = config.resolve_model(config.draft_model(engine))
    kw = llm_config_kwargs(engine, config.resolve_model(engine.model), draft)
    os.environ.update(kw["runtime_env"]["env_vars"])
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0-1"  # alone on the machine during this test
    from vllm import LLM, SamplingParams

    llm = LLM(model=config.resolve_model(engine.model), disable_log_stats=False, **kw["engine_kwargs"])
    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], SamplingParams(temperature=0,
                                                                                        max_tokens=max_tokens),
                    use_tqdm=False)
    counters = {m.name: float(getattr(m, "value", 0) or 0) for m in llm.get_metrics()
                if m.name.startswith("vllm:spec_decode_num_")}
    Path(out).write_text(json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in outs], "spec": counters}))


if __name__ == "__main__":
    main()
