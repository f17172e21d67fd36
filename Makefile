# flowood: the two commands.
#   make demo   set up .venv, get FashionMNIST and MNIST, train a small RealNVP on CPU, evaluate OOD
#   make test   set up .venv, run the linter and the test suite
#   make docs   build the documentation site into site/
#   make bench  set up .venv-bench (flowood + the peer libraries) and run benchmarks/compare.py
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= runs/demo
BIN := $(VENV)/bin

BENCH_VENV ?= .venv-bench
PEERS ?= normflows==1.7.3 nflows==0.14 zuko==1.6.0

.PHONY: demo test docs setup clean-demo bench bench-setup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first: on these machines the pinned wheels come from local disk
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

demo: setup
	$(BIN)/flowood data fetch fashionmnist mnist
	$(BIN)/flowood train --config demo --out $(DEMO_OUT)/train --overwrite
	$(BIN)/flowood evaluate --checkpoint $(DEMO_OUT)/train/checkpoints/last.ckpt \
		--ood mnist digits noise constant --out $(DEMO_OUT)/eval --overwrite
	@echo "demo outputs: $(DEMO_OUT)/train (checkpoints, logs) and $(DEMO_OUT)/eval (report.html, metrics.json, figures)"

test: setup
	$(BIN)/ruff check src tests benchmarks docs scripts
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --doctest-modules src tests

docs: setup
	$(BIN)/python -m mkdocs build --strict

clean-demo:
	rm -rf $(DEMO_OUT)

# Peers are installed into their own environment, never into .venv or flowood's dependencies.
bench-setup: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -c "import torch, torchvision" 2>/dev/null || $(BENCH_VENV)/bin/python -m pip install -q $(TORCH)
	$(BENCH_VENV)/bin/python -m pip install -q -e ".[onnxruntime,openvino,baselines]" $(PEERS)
	@touch $@

bench: bench-setup
	$(BENCH_VENV)/bin/python benchmarks/compare.py
