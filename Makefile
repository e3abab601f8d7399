# Both targets create or reuse .venv in the repository root and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# onnxruntime-gpu where an NVIDIA driver is present, the CPU onnxruntime elsewhere.
ORT_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: demo test install system-packages protos benchmark benchmark-cancel benchmark-baselines benchmark-time-to-accuracy variants clean

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned first so the range in pyproject.toml is met without another download. On
	# the project's build machines pip's configuration supplies the CPU wheel; plain PyPI serves
	# the larger CUDA build on x86_64.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e "clients/python[show]" -e ".[$(ORT_EXTRA),test,bench]"
	touch $@

install: $(VENV)/.installed

system-packages:
	sh scripts/install_system_packages.sh

demo: install
	$(PY) scripts/demo.py

test: install system-packages
	$(PY) -m pytest -q

protos: install
	$(PY) scripts/generate_protos.py
	$(PY) scripts/generate_api_docs.py

benchmark: install system-packages
	$(PY) benchmarks/demo_task.py

# How fast cancelled jobs and Adapt calls stop, per phase; appends to docs/benchmarks.md.
benchmark-cancel: install
	$(PY) benchmarks/cancel_latency.py

# BASE against its baselines and ablations on glyph and Fashion-MNIST tasks; resumable.
benchmark-baselines: install system-packages
	$(PY) benchmarks/baselines.py --threads 1

# Wall and CPU time for BASE to reach what DARTS from scratch reaches with ten times its budget.
benchmark-time-to-accuracy: install system-packages
	$(PY) benchmarks/time_to_accuracy.py --threads 1

# Meta-train the checkpoints of the variant rows of benchmark-baselines into .cache/variants.
variants: install system-packages
	sh scripts/train_variants.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache
