# Two commands: `make demo` and `make test`. Both set everything up themselves, idempotently.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lowbit-installed

.PHONY: setup data demo test lint bench clean

$(PY):
	python3 -m venv $(VENV)

# torch first and alone: 2.13.0 is a CPU wheel on disk; anything else pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,onnx,openvino,transformers,binary,compress]'
	touch $(STAMP)

data:
	@scripts/ensure-data.sh

setup: $(STAMP) data

demo: setup
	$(VENV)/bin/lowbit demo --out demo-report

test: setup
	LOWBIT_PROGRESS=0 HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check lowbit tests bench

bench: setup
	$(PY) bench/ptq_speed.py
	$(PY) bench/observer_table.py
	$(PY) bench/user_models.py
	$(PY) bench/ort_latency.py

clean:
	rm -rf $(VENV) demo-report .pytest_cache
