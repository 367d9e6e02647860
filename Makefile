# Two commands set everything up on a fresh clone:
#   make compress MODEL=resnet18     (the main job on the embedded Fashion-MNIST default)
#   make test                        (the test suite)
# Both create .venv and fetch the data first; each step runs once (stamp files).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/compressor
MODEL ?= resnet18
DATASET ?= fashion-mnist
BUDGET ?= 0.5
EPISODES ?=
SEED ?= 0
FMNIST_DEBIAN := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data test lint compress pretrain bench bench-quick baselines coverage example clean

install: $(VENV)/.stamp-install
$(VENV)/.stamp-install: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,distributed]'
	touch $@

# Fashion-MNIST offline: Debian's dataset-fashion-mnist package. Without apt the CLI falls back to
# files in data/fashion-mnist, then to torchvision's downloader.
data: $(VENV)/.stamp-data
$(VENV)/.stamp-data: | $(VENV)/.stamp-install
	@if [ -f $(FMNIST_DEBIAN) ] || [ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "no apt: put the Fashion-MNIST *-ubyte.gz files in data/fashion-mnist (or have internet)"; \
	fi
	touch $@

test: install data
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check compressor tests benchmarks examples

# Your own network through the Python API (runs in CI): examples/custom_model.py.
example: install data
	$(PY) examples/custom_model.py --out runs/custom_model

# Every torchvision CNN under 100 M parameters on a tiny baseline: compresses or is refused up
# front (results/coverage.md). Hours; run it alone.
coverage: install data
	$(PY) -m benchmarks.coverage --out results

pretrain: install data
	$(CLI) pretrain --model $(MODEL) --dataset $(DATASET)

compress: install data
	$(CLI) compress --model $(MODEL) --dataset $(DATASET) --latency-budget $(BUDGET) \
		--seed $(SEED) $(if $(EPISODES),--episodes $(EPISODES))

# Benchmarks (results committed under results/bench*/ with the command in the generated summary).
bench-quick: install data
	$(PY) -m benchmarks.bench --models resnet18 --budgets 0.5 --seeds 0 --episodes 30 \
		--methods uniform global greedy random agent --train-size 10000 --out results/bench-quick

bench: install data
	$(PY) -m benchmarks.latency_model --model resnet18 --policies 50 --seed 0
	$(PY) -m benchmarks.latency_model --model mobilenet_v2 --policies 50 --seed 0
	$(PY) -m benchmarks.bench --episodes 100 --out results/bench --budgets 0.3 0.5 0.75 \
		--models resnet18 mobilenet_v2 --seeds 0
	$(PY) -m benchmarks.bench --episodes 100 --out results/bench --budgets 0.3 0.5 0.75 \
		--models resnet18 mobilenet_v2 --seeds 1 2 --methods agent random agent-flops
	$(PY) -m benchmarks.honesty --model resnet18 --budget 0.3 --policies 20 --episodes 40
	$(PY) -m benchmarks.bench --episodes 100 --out results/bench-ft50 --budgets 0.3 \
		--models resnet18 --seeds 0 --methods agent random --episode-finetune-steps 50
	$(PY) -m benchmarks.bench --episodes 100 --out results/bench-short --train-size 5000 \
		--budgets 0.3 --models resnet18 mobilenet_v2 --seeds 0 \
		--methods agent uniform random global greedy
	$(PY) -m benchmarks.bench --episodes 100 --out results/bench-short --train-size 5000 \
		--budgets 0.3 --models resnet18 mobilenet_v2 --seeds 0 1 2 --methods agent random
	$(PY) -m benchmarks.bench --episodes 100 --out results/bench-short-ft50 --train-size 5000 \
		--budgets 0.3 --models resnet18 mobilenet_v2 --seeds 0 --methods agent random \
		--episode-finetune-steps 50

baselines: install data
	$(CLI) pretrain --model resnet18
	$(CLI) pretrain --model mobilenet_v2
	$(PY) -m benchmarks.baselines models/resnet18-fashion-mnist.pt \
		models/mobilenet_v2-fashion-mnist.pt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
