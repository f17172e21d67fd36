# flowood: the two commands.
#   make demo   set up .venv, get FashionMNIST and MNIST, train a small RealNVP on CPU, evaluate OOD
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= runs/demo
BIN := $(VENV)/bin

.PHONY: demo test setup clean-demo

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
	$(BIN)/flowood train --config configs/demo.yaml --out $(DEMO_OUT)/train --overwrite
	$(BIN)/flowood evaluate --checkpoint $(DEMO_OUT)/train/checkpoints/last.ckpt \
		--ood mnist digits noise constant --out $(DEMO_OUT)/eval
	@echo "demo outputs: $(DEMO_OUT)/train (checkpoints, logs) and $(DEMO_OUT)/eval (report.html, metrics.json, figures)"

test: setup
	$(BIN)/python -m pytest -q -n 2 --doctest-modules src tests

clean-demo:
	rm -rf $(DEMO_OUT)
