"""Replay a real arrival trace through the load predictor and the Validator autoscaling policies, offline.

Input: ../shared/data/traces/AzureLLMInferenceTrace_conv.csv (one hour of real request
arrivals with context and generated token counts; the last, partial minute is dropped),
time-scaled by `--speed` (2 = the same arrivals in half the time, twice the rate).

1. **Forecast error.** Arrivals are counted in steps of `--step` seconds; the damped Holt
   forecaster (`serving.load.forecast`, the code that serves) forecasts the rate of the step
   that ends 10 s and 60 s ahead, compared with the rate that came (MAPE). Its smoothing
   parameters are tuned on the first half of the trace and reported on the second half,
   beside the configured defaults and two baselines (last value; mean of the last minute).
   Counting noise bounds what any forecast can do: a step of a Poisson process with mean μ
   has a mean absolute deviation of about sqrt(2μ/π), so even a perfect rate forecast has a
   MAPE near sqrt(2/(π μ)); it is printed as the floor.
2. **Replicas.** Each request is a cache hit with probability `--hit-rate`, otherwise it
   reaches the Validator with probability `--escalation` and holds it for
   prefill + decode time (ContextTokens / `--prefill-tps` + GeneratedTokens / `--decode-tps`).
   Every `--tick` seconds two policies choose the Validator's replicas, which become ready
   `--startup` seconds after they are asked for:
   * *request-based* (Ray Serve's default): ongoing requests averaged over 30 s / target,
     upscale delay 30 s, downscale delay 600 s;
   * *cascade* (`serving.load.autoscaling.cascade_replicas`): forecast arrivals `--startup`
     seconds ahead × (1 − hit rate) × escalation × mean service time, plus z standard
     deviations of headroom, / target, with the measured rates (`CascadeStats`),
     hysteresis 0.2, downscale delay 120 s; side by side for z = 0, 0.5, `--headroom`, 1.65.
   Reported after a warm-up (`--warmup`, both start from one replica): replica-seconds
   (cost), share of time with ready capacity below the load, and the mean shortfall.
   Queueing is not simulated: the load is the concurrency the requests would have with
   enough replicas.

Writes docs/img/replay_trace.png and reports/replay_trace.json; prints the figures.

    python scripts/replay_trace.py [--speed 1] [--target 4] [--headroom 1]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.config import CascadeAutoscalingConfig, LoadConfig  # noqa: E402
from serving.load.autoscaling import CascadeStats, cascade_replicas  # noqa: E402
from serving.load.forecast import Holt, mape  # noqa: E402

TRACE = REPO.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
HORIZONS = (10.0, 60.0)


def load_trace(path: Path, speed: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arrival seconds from the first, context tokens, generated tokens), time-scaled."""
    times, ctx, gen = [], [], []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            # Seven decimals of seconds: fromisoformat takes at most six.
            times.append(dt.datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp())
            ctx.append(int(row["ContextTokens"]))
            gen.append(int(row["GeneratedTokens"]))
    t = np.array(times)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order][0]
    # The recording stops mid-minute: a last, partial step would look like traffic vanishing.
    keep = t < math.floor(t[-1] / 60) * 60
    return t[keep] / speed, np.array(ctx)[order][keep], np.array(gen)[order][keep]


def step_rates(arrivals: np.ndarray, step: float) -> np.ndarray:
    """Arrival rate (1/s) of each step."""
    n = math.ceil((arrivals[-1] + 1e-9) / step)
    return np.bincount((arrivals // step).astype(int), minlength=n)[:n] / step


def holt_forecasts(rates: np.ndarray, h_steps: int, alpha: float, beta: float, phi: float) -> np.ndarray:
    """forecast[k] = the forecast, made after step k, of step k + h_steps (NaN where out of range)."""
    model = Holt(alpha, beta, phi)
    out = np.full(len(rates), np.nan)
    for k, y in enumerate(rates):
        model.update(float(y))
        if k + h_steps < len(rates):
            out[k] = model.forecast(h_steps)
    return out


def baseline_forecasts(rates: np.ndarray, h_steps: int, window: int) -> np.ndarray:
    """Mean of the last `window` steps as the forecast (window 1: the last value)."""
    out = np.full(len(rates), np.nan)
    csum = np.concatenate([[0.0], np.cumsum(rates)])
    for k in range(len(rates) - h_steps):
        lo = max(0, k + 1 - window)
        out[k] = (csum[k + 1] - csum[lo]) / (k + 1 - lo)
    return out


def errors(rates: np.ndarray, forecasts: np.ndarray, h_steps: int, lo: int, hi: int) -> float:
    """MAPE of forecasts made after steps lo..hi-1."""
    ks = [k for k in range(lo, hi) if k + h_steps < len(rates) and not np.isnan(forecasts[k])]
    return mape([float(rates[k + h_steps]) for k in ks], [float(forecasts[k]) for k in ks])


def forecast_report(arrivals: np.ndarray, step: float, defaults: LoadConfig) -> dict:
    rates = step_rates(arrivals, step)
    half = len(rates) // 2
    warm = int(60 / step)  # the first minute warms every model up
    hs = {h: max(1, round(h / step)) for h in HORIZONS}

    def score(a, b, p, lo, hi):
        return {h: errors(rates, holt_forecasts(rates, n, a, b, p), n, lo, hi) for h, n in hs.items()}

    grid = list(itertools.product((0.1, 0.2, 0.3, 0.5, 0.7), (0.0, 0.02, 0.05, 0.1, 0.2), (0.8, 0.9, 0.98, 1.0)))
    tuned = min(grid, key=lambda g: sum(score(*g, warm, half).values()))
    report: dict = {"step_s": step, "steps": len(rates), "mean_rate": float(rates.mean()),
                    "tuned": {"level_alpha": tuned[0], "trend_beta": tuned[1], "damping": tuned[2]},
                    "test_half": {}}
    mu = float(rates[half:].mean() * step)
    report["poisson_floor_mape"] = math.sqrt(2 / (math.pi * mu))
    rows = {
        "holt (tuned on 1st half)": score(*tuned, half, len(rates)),
        "holt (config defaults)": score(defaults.level_alpha, defaults.trend_beta, defaults.damping, half,
                                        len(rates)),
        "last value": {h: errors(rates, baseline_forecasts(rates, n, 1), n, half, len(rates)) for h, n in hs.items()},
        "mean of last 60 s": {h: errors(rates, baseline_forecasts(rates, n, int(60 / step)), n, half, len(rates))
                              for h, n in hs.items()},
    }
    report["test_half"] = {name: {f"{h:g}s": round(v, 4) for h, v in r.items()} for name, r in rows.items()}
    report["_rates"] = rates
    report["_forecast60"] = holt_forecasts(rates, hs[60.0], *tuned)
    return report


def _cascade_name(z: float) -> str:
    return f"cascade z={z:g}"


def replica_report(arrivals, ctx, gen, args, load: LoadConfig) -> dict:
    rng = np.random.default_rng(args.seed)
    hit = rng.random(len(arrivals)) < args.hit_rate
    to_validator = ~hit & (rng.random(len(arrivals)) < args.escalation)
    service = ctx / args.prefill_tps + gen / args.decode_tps
    starts, ends = arrivals[to_validator], arrivals[to_validator] + service[to_validator]
    ends_sorted = np.sort(ends)

    def inflight(t: float) -> int:
        return int(np.searchsorted(starts, t, side="right") - np.searchsorted(ends_sorted, t, side="right"))

    horizon = arrivals[-1]
    seconds = np.arange(0.0, horizon, 1.0)
    load_1s = np.array([inflight(t) for t in seconds])
    ticks = np.arange(0.0, horizon, args.tick)
    target = args.target
    lo, hi = 1, args.max_replicas
    cfg = CascadeAutoscalingConfig(enabled=True, target_ongoing_requests=target, horizon_s=args.startup,
                                   scale_down_hysteresis=args.hysteresis, downscale_delay_s=args.downscale_delay,
                                   headroom_sigmas=args.headroom)
    stats_clock = [0.0]
    stats = CascadeStats(load.model_copy(update={"autoscaling": cfg}), clock=lambda: stats_clock[0])
    done_at = np.where(to_validator, arrivals + service, arrivals)
    order = np.argsort(done_at, kind="stable")
    fed = 0

    policies = {"request-based": {"target": lo, "pending": [], "ready": lo, "above": 0, "below": 0},
                **{_cascade_name(z): {"target": lo, "pending": [], "ready": lo, "state": {},
                                      "cfg": cfg.model_copy(update={"headroom_sigmas": z})}
                   for z in sorted({0.0, 0.5, args.headroom, 1.65})}}
    series = {name: [] for name in policies}
    needed = []
    i_arr = 0
    for t in ticks:
        # Feed the front door's measurements up to t (arrivals, cache outcomes, routing, service times).
        while i_arr < len(arrivals) and arrivals[i_arr] <= t:
            stats_clock[0] = arrivals[i_arr]
            stats.arrival("interactive")
            stats.cache(bool(hit[i_arr]))
            if not hit[i_arr]:
                stats.routed(bool(to_validator[i_arr]))
            i_arr += 1
        # Service times are measured when a Validator call finishes.
        while fed < len(order) and done_at[order[fed]] <= t:
            j = order[fed]
            if to_validator[j]:
                stats.validator_time(float(service[j]))
            fed += 1
        stats_clock[0] = t
        window = load_1s[max(0, int(t) - 30):int(t) + 1]
        signals = stats.signals(args.startup)
        needed.append(math.ceil(inflight(t) / target))
        for name, p in policies.items():
            # Replicas asked for become ready after the start-up time; removals are immediate.
            p["ready"] = min(p["target"], p["ready"] + sum(n for due, n in p["pending"] if due <= t))
            p["pending"] = [(due, n) for due, n in p["pending"] if due > t]
            if name == "request-based":
                desired = min(max(math.ceil(window.mean() / target - 1e-9), lo), hi)
                p["above"] = p["above"] + args.tick if desired > p["target"] else 0
                p["below"] = p["below"] + args.tick if desired < p["target"] else 0
                if p["above"] >= 30 or (desired < p["target"] and p["below"] >= 600):
                    new = desired
                    p["above"] = p["below"] = 0
                else:
                    new = p["target"]
            else:
                new, p["state"] = cascade_replicas(signals, p["cfg"], p["target"], lo, hi, t, p["state"])
            if new > p["target"]:
                p["pending"].append((t + args.startup, new - p["target"]))
            elif new < p["target"]:
                p["ready"] = min(p["ready"], new)
            p["target"] = new
            series[name].append((p["target"], p["ready"]))

    out: dict = {"validator_requests": int(to_validator.sum()), "mean_service_s": float(service[to_validator].mean()),
                 "mean_inflight": float(load_1s.mean()), "peak_inflight": int(load_1s.max()), "policies": {}}
    tick_load = np.array([inflight(t) for t in ticks])
    measured = ticks >= args.warmup  # both policies start from one replica: leave the cold start out
    out["measured_from_s"] = args.warmup
    for name, s in series.items():
        arr = np.array(s)[measured]
        cap = arr[:, 1] * target
        short = np.maximum(tick_load[measured] - cap, 0)
        out["policies"][name] = {
            "replica_seconds": float(arr[:, 0].sum() * args.tick),
            "mean_replicas": float(arr[:, 0].mean()),
            "under_provisioned_share": float((short > 0).mean()),
            "mean_shortfall_requests": float(short.mean()),
            "scale_events": int((np.diff(arr[:, 0]) != 0).sum()),
        }
    out["_ticks"], out["_needed"], out["_series"], out["_load"] = ticks, needed, series, tick_load
    return out


def plot(fc: dict, rep: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    step = fc["step_s"]
    t = np.arange(len(fc["_rates"])) * step / 60
    h = max(1, round(60 / step))
    a1.plot(t, fc["_rates"], lw=0.6, color="0.6", label=f"arrival rate ({step:g} s steps)")
    a1.plot(t + h * step / 60, fc["_forecast60"], lw=1.0, color="C0", label="Holt forecast made 60 s earlier")
    a1.set_ylabel("requests / s")
    a1.legend(loc="upper left")
    a1.set_title(f"Azure LLM conversation trace x{args.speed:g}: forecast and Validator replicas")
    tt = rep["_ticks"] / 60
    a2.step(tt, rep["_needed"], where="post", color="0.6", lw=0.8, label="needed now (load / target)")
    for name, color in (("request-based", "C3"), (_cascade_name(args.headroom), "C2")):
        a2.step(tt, [r for _, r in rep["_series"][name]], where="post", color=color, lw=1.2,
                label=f"{name}: ready replicas")
    a2.set_xlabel("minutes")
    a2.set_ylabel("Validator replicas")
    a2.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--speed", type=float, default=1.0, help="time-scaling: arrivals come this many times faster")
    ap.add_argument("--step", type=float, default=5.0, help="forecast step (s)")
    ap.add_argument("--hit-rate", type=float, default=0.2)
    ap.add_argument("--escalation", type=float, default=0.4)
    ap.add_argument("--prefill-tps", type=float, default=4000.0, help="Validator prefill tokens/s per request")
    ap.add_argument("--decode-tps", type=float, default=30.0, help="Validator decode tokens/s per sequence")
    ap.add_argument("--target", type=float, default=4.0, help="concurrent requests per Validator replica")
    ap.add_argument("--startup", type=float, default=60.0, help="seconds for a new replica to be ready")
    ap.add_argument("--tick", type=float, default=10.0, help="autoscaling decision interval (s)")
    ap.add_argument("--max-replicas", type=int, default=32)
    ap.add_argument("--headroom", type=float, default=CascadeAutoscalingConfig().headroom_sigmas)
    ap.add_argument("--hysteresis", type=float, default=CascadeAutoscalingConfig().scale_down_hysteresis)
    ap.add_argument("--downscale-delay", type=float, default=CascadeAutoscalingConfig().downscale_delay_s)
    ap.add_argument("--warmup", type=float, default=300.0, help="seconds left out of the replica figures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "replay_trace.png")
    ap.add_argument("--report", type=Path, default=REPO / "reports" / "replay_trace.json")
    args = ap.parse_args()
    if not args.trace.exists():
        print(f"trace not found at {args.trace}", file=sys.stderr)
        return 2
    arrivals, ctx, gen = load_trace(args.trace, args.speed)
    load = LoadConfig(interval_s=args.step)
    fc = forecast_report(arrivals, args.step, load)
    print(f"{len(arrivals)} arrivals over {arrivals[-1] / 60:.1f} min (x{args.speed:g}), "
          f"mean {fc['mean_rate']:.2f} req/s; steps of {args.step:g} s")
    print(f"forecast MAPE on the second half (tuned on the first: {fc['tuned']}); "
          f"counting-noise floor ~{fc['poisson_floor_mape']:.3f}")
    print(f"  {'forecaster':<28}" + "".join(f"{f'{h:g} s':>10}" for h in HORIZONS))
    for name, r in fc["test_half"].items():
        print(f"  {name:<28}" + "".join(f"{r[f'{h:g}s']:>10.3f}" for h in HORIZONS))
    rep = replica_report(arrivals, ctx, gen, args, load.model_copy(update=fc["tuned"]))
    print(f"Validator: {rep['validator_requests']} requests, mean service {rep['mean_service_s']:.1f} s, "
          f"in flight mean {rep['mean_inflight']:.1f} / peak {rep['peak_inflight']}; target {args.target:g} per "
          f"replica, start-up {args.startup:g} s")
    print(f"  {'policy':<20}{'replica-s':>11}{'mean repl.':>12}{'under-prov.':>13}{'shortfall':>11}{'changes':>9}")
    for name, r in rep["policies"].items():
        print(f"  {name:<20}{r['replica_seconds']:>11.0f}{r['mean_replicas']:>12.2f}"
              f"{r['under_provisioned_share']:>12.1%}{r['mean_shortfall_requests']:>11.2f}{r['scale_events']:>9}")
    plot(fc, rep, args, args.plot)
    print(f"plot: {args.plot.relative_to(REPO) if args.plot.is_relative_to(REPO) else args.plot}")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    public = {"args": {k: str(v) for k, v in vars(args).items()},
              "forecast": {k: v for k, v in fc.items() if not k.startswith("_")},
              "replicas": {k: v for k, v in rep.items() if not k.startswith("_")}}
    args.report.write_text(json.dumps(public, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
