# Two commands set everything up on a fresh clone:
#   make compress MODEL=resnet18     (the main job on the embedded Fashion-MNIST default;
#                                     MODEL=gpt_tiny: the byte-level GPT on the stdlib's source)
#   make test                        (the test suite)
# Both create .venv and fetch the data first; each step runs once (stamp files).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/compressor
MODEL ?= resnet18
# Causal LMs of ours train on the Python standard library's source (no download), not images.
TEXT_MODELS := gpt_tiny
DATASET ?= $(if $(filter $(TEXT_MODELS),$(MODEL)),stdlib,fashion-mnist)
BUDGET ?= 0.5
EPISODES ?=
SEED ?= 0
FMNIST_DEBIAN := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data test lint compress pretrain bench bench-quick bench-methods bench-vit bench-honesty \
	bench-ablation bench-latency bench-int8 bench-distributed baselines coverage example clean

install: $(VENV)/.stamp-install
$(VENV)/.stamp-install: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,distributed,lm]'
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
# front (results/coverage-xeon). Hours; run it alone.
coverage: install data
	$(PY) -m benchmarks.coverage --out runs/bench/coverage --timeout 1800

pretrain: install data
	$(CLI) pretrain --model $(MODEL) --dataset $(DATASET)

compress: install data
	$(CLI) compress --model $(MODEL) --dataset $(DATASET) --latency-budget $(BUDGET) \
		--seed $(SEED) $(if $(EPISODES),--episodes $(EPISODES))

# Benchmarks: each target reruns the commands of the committed studies' READMEs (results/<study>/)
# into runs/bench/<study>/ (git-ignored), to compare with results/<study>/summary.json; a bench
# rerun skips rows already in its benchmarks.json. Hours each; run them alone (latency is measured).
# results/BENCHMARKS.md lists every study with the target that reproduces it.
BENCH := $(PY) -m benchmarks.bench --episodes 100
RB := runs/bench

bench: bench-methods bench-honesty bench-ablation bench-latency bench-int8 bench-distributed bench-vit

# A smoke test of the whole benchmark (resnet18, budget 0.5, short searches): minutes, not a result.
bench-quick: install data
	$(PY) -m benchmarks.bench --models resnet18 --budgets 0.5 --seeds 0 --episodes 30 \
		--methods uniform global greedy random agent --train-size 10000 --out $(RB)/quick

# results/bench-v2: every search method at the same measured budget, 3 seeds.
bench-methods: install data
	$(BENCH) --out $(RB)/bench-v2/short --train-size 5000 --budgets 0.2 0.3 \
		--models resnet18 mobilenet_v2 --seeds 0 1 2 --methods agent random greedy uniform global
	$(BENCH) --out $(RB)/bench-v2/warm-sens --train-size 5000 --budgets 0.2 \
		--models resnet18 mobilenet_v2 --seeds 0 1 2 --methods agent \
		--agent-option warm_start=true --agent-option sensitivity=true
	$(BENCH) --out $(RB)/bench-v2/full-0.5 --budgets 0.5 --models resnet18 mobilenet_v2 \
		--seeds 0 1 2 --methods agent
	$(BENCH) --out $(RB)/bench-v2/full-0.3 --budgets 0.3 --models resnet18 mobilenet_v2 \
		--seeds 0 1 2 --methods agent random greedy uniform global
	$(BENCH) --out $(RB)/bench-v2/full-0.2 --budgets 0.2 --models resnet18 mobilenet_v2 \
		--seeds 0 1 2 --methods agent random greedy uniform global

# results/vit: the embedded ViT (pretrained once), its latency model, the methods at 0.3 and 0.5
# (short final), depth off, ddpg at 0.5 (full final), mixed INT8; one thread each (its README).
VIT := OMP_NUM_THREADS=1 $(BENCH) --models vit_tiny
bench-vit: install data
	$(CLI) pretrain --model vit_tiny
	$(VIT) --budgets 0.3 --seeds 0 1 2 --methods agent random greedy uniform global \
		--train-size 5000 --out $(RB)/vit/short
	$(VIT) --budgets 0.3 --seeds 0 1 2 --methods agent --train-size 5000 --no-depth \
		--out $(RB)/vit/short-nodepth
	$(VIT) --budgets 0.5 --seeds 0 1 2 --methods agent --final-epochs 1 --out $(RB)/vit/full
	$(VIT) --budgets 0.3 --seeds 0 --methods agent --train-size 5000 --quantize mixed \
		--out $(RB)/vit/short-mixed
	$(VIT) --budgets 0.5 --seeds 0 1 2 --methods agent random greedy uniform global \
		--train-size 5000 --out $(RB)/vit/short-05
	$(VIT) --budgets 0.5 --seeds 0 1 2 --methods agent --train-size 5000 --no-depth \
		--out $(RB)/vit/short-05-nodepth
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.latency_model --model vit_tiny --policies 50 \
		--blocks 6 --runs 10 --calibration 0 --out $(RB)/vit/lm
	$(PY) -m benchmarks.vit_study --baseline models/vit_tiny-fashion-mnist.pt \
		--latency-model $(RB)/vit/lm/latency_model_vit_tiny.json --bench $(RB)/vit/short \
		$(RB)/vit/short-nodepth $(RB)/vit/full $(RB)/vit/short-mixed $(RB)/vit/short-05 \
		$(RB)/vit/short-05-nodepth --out $(RB)/vit

# results/honesty-v2: which episode reward ranks policies like the final fine-tune.
bench-honesty: install data
	for spec in "mobilenet_v2 0.3" "resnet18 0.2" "mobilenet_v2 0.2" "resnet18 0.3"; do set -- $$spec; \
		$(PY) -m benchmarks.honesty --model $$1 --budget $$2 --policies 10 --episodes 40 \
			--out $(RB)/honesty-v2 || exit 1; done
	$(PY) -m benchmarks.honesty --summarize --out $(RB)/honesty-v2

# results/ablation: AMC's noise schedule and the warm start (one seed, that date's BN-only reward).
bench-ablation: install data
	$(BENCH) --models resnet18 --budgets 0.3 --seeds 0 --episode-finetune-steps 0 \
		--methods agent uniform greedy random --out $(RB)/ablation/default
	$(BENCH) --models resnet18 --budgets 0.3 --seeds 0 --episode-finetune-steps 0 \
		--methods agent --out $(RB)/ablation/amc \
		--agent-option noise_schedule=decay --agent-option noise_floor=0
	$(BENCH) --models resnet18 --budgets 0.3 --seeds 0 --episode-finetune-steps 0 \
		--methods agent --out $(RB)/ablation/warm-sens \
		--agent-option warm_start=true --agent-option sensitivity=true

# results/latency-model and results/latency-noise-xeon.
bench-latency: install
	$(PY) -m benchmarks.latency_model --model resnet18 --policies 50 --seed 0 --out $(RB)/latency-model
	$(PY) -m benchmarks.latency_model --model mobilenet_v2 --policies 50 --seed 0 --out $(RB)/latency-model
	$(PY) -m benchmarks.latency_noise --models resnet18 mobilenet_v2 convnext_tiny efficientnet_b0 \
		--rounds 12 --out $(RB)/latency-noise-xeon

# results/int8 (INT8 latency prediction), results/int8-v2 (none / int8 / mixed, 3 seeds) and
# results/int8-v3 (searched vs mixed, 3 seeds; none and int8 seed 0).
bench-int8: install data
	for m in resnet18 mobilenet_v2; do for mode in int8 mixed; do \
		$(PY) -m benchmarks.int8_latency --model $$m --policies 30 --seed 0 --mode $$mode \
			--out $(RB)/int8/latency || exit 1; done; done
	for q in none int8 mixed; do \
		$(BENCH) --models resnet18 mobilenet_v2 --budgets 0.3 --seeds 0 1 2 --methods agent \
			--quantize $$q --out $(RB)/int8-v2/$$q || exit 1; \
		$(BENCH) --models mobilenet_v2 --budgets 0.2 --seeds 0 --methods agent \
			--quantize $$q --out $(RB)/int8-v2/$$q || exit 1; done
	for seed in 0 1 2; do for q in searched mixed; do \
		$(BENCH) --models resnet18 mobilenet_v2 --budgets 0.3 --seeds $$seed --methods agent \
			--quantize $$q --out $(RB)/int8-v3/$$q || exit 1; done; done
	for q in none int8; do \
		$(BENCH) --models resnet18 mobilenet_v2 --budgets 0.3 --seeds 0 --methods agent \
			--quantize $$q --out $(RB)/int8-v3/$$q || exit 1; done

# results/distributed: episodes per minute with Ray workers.
bench-distributed: install data
	$(PY) -m benchmarks.distributed --out $(RB)/distributed

# results/baselines: the dense baselines' table and curves.
baselines: install data
	$(CLI) pretrain --model resnet18
	$(CLI) pretrain --model mobilenet_v2
	$(PY) -m benchmarks.baselines models/resnet18-fashion-mnist.pt \
		models/mobilenet_v2-fashion-mnist.pt --out $(RB)/baselines

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
