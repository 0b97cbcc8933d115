# The two commands of the README: `make demo` and `make test` do all set-up on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2
# apt-get needs root: CI runs as root, a laptop goes through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test test-fast bench install chromium serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The web page's tests drive Debian's chromium with playwright (`playwright install` would download
# a browser; Debian's is the one apt already trusts). Checked on every run, installed when missing.
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	@chromium --version

# The main job: train the digits default (a few minutes on a CPU), then sample a 10x10 class grid.
demo: $(STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/image_train.py --output_dir outputs/demo --overwrite_output_dir
	$(PY) recipes/sample_grid.py --model outputs/demo/export --output outputs/demo/digits_grid.png
	@echo "outputs: outputs/demo/digits_grid.png (class grid), outputs/demo/export (safetensors pipeline),"
	@echo "         outputs/demo/samples (validation grids), tensorboard --logdir outputs/demo/logs"

test: $(STAMP) chromium
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

serve: $(STAMP)
	$(VENV)/bin/mmdiff serve

bench: $(STAMP)
	$(PY) benchmarks/samplers.py

clean:
	rm -rf $(VENV) outputs runs .pytest_cache
