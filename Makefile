# The two commands of the README: `make demo` and `make test` do all set-up on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: demo test test-fast bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: train the digits default (a few minutes on a CPU), then sample a 10x10 class grid.
demo: $(STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/image_train.py --output_dir outputs/demo --overwrite_output_dir
	$(PY) recipes/sample_grid.py --model outputs/demo/export --output outputs/demo/digits_grid.png
	@echo "outputs: outputs/demo/digits_grid.png (class grid), outputs/demo/export (safetensors pipeline),"
	@echo "         outputs/demo/samples (validation grids), tensorboard --logdir outputs/demo/logs"

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(PY) benchmarks/samplers.py

clean:
	rm -rf $(VENV) outputs runs .pytest_cache
