# Two commands on a fresh machine: `make demo` and `make test`. Both create and reuse .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
OUT    ?= demo_out

# torch and torchvision must be one build (both CPU, or both the same CUDA): a CUDA torchvision beside a CPU torch
# cannot load its C++ ops, and `import torchvision` (so `import open_clip`) fails. PyPI's Linux x86_64 wheels of both
# are CUDA builds (torch pulls ~3 GB of nvidia-* wheels); the CPU pair (+cpu) comes from PyTorch's CPU index, added
# here as an extra index. Where that index cannot be reached, the venv falls back to PyPI's matching pair.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN   := $(shell grep -E '^torch==' constraints.txt | cut -d= -f3)
VISION_PIN  := $(shell grep -E '^torchvision==' constraints.txt | cut -d= -f3)

RT_VENV := .venv-runtime
RT_PY   := $(RT_VENV)/bin/python
RT_STAMP := $(RT_VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: venv demo test test-slow test-runtime test-triton lint typecheck clean cpp-ext

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if $(PY) -c "import urllib.request as r; r.urlopen('$(TORCH_INDEX)/torch/', timeout=10)" 2>/dev/null; then \
	  $(PY) -m pip install -q -c constraints.txt --extra-index-url $(TORCH_INDEX) torch torchvision; \
	else echo "$(TORCH_INDEX) cannot be reached: torch and torchvision come from PyPI"; fi
	$(PY) -m pip install -q -c constraints.txt -e '.[train,export,detect,plot,dev,sign,mqtt]'
	$(PY) -c "import torchvision" 2>/dev/null || { \
	  echo "torch and torchvision are different builds (no CPU torchvision from $(TORCH_INDEX)):" \
	       "installing PyPI's matching pair torch $(TORCH_PIN) + torchvision $(VISION_PIN)"; \
	  $(PY) -m pip install -q -c constraints.txt 'torch===$(TORCH_PIN)' 'torchvision===$(VISION_PIN)'; }
	$(PY) -c "import open_clip"
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(VENV)/bin/fgad-demo --out $(OUT)

test: venv
	$(PY) -m pytest -q -m "not slow and not gpu" tests

test-slow: venv
	$(PY) -m pytest -q -m "slow" tests

# The torch-free layers' tests in a venv from the base install only (no torch, no open_clip): the
# runtime, the bundle contract and the core primitives need none of the training stack. onnx (test
# bundles), scipy and scikit-learn (reference values) are test-only; tests/bundle/test_golden.py
# writes bundles with torch and skips here.
$(RT_STAMP): pyproject.toml constraints.txt
	test -x $(RT_PY) || $(PYTHON) -m venv $(RT_VENV)
	$(RT_PY) -m pip install -q --upgrade pip
	$(RT_PY) -m pip install -q -c constraints.txt -e '.[sign,mqtt]' pytest pytest-timeout onnx scipy scikit-learn
	rm -f $(RT_VENV)/.installed-*
	touch $@

test-runtime: $(RT_STAMP)
	@! $(RT_PY) -c "import torch" 2>/dev/null || { echo "torch is importable in $(RT_VENV)"; exit 1; }
	$(RT_PY) -m pytest -q -p no:cacheprovider tests/runtime tests/bundle tests/core

# fgad on a real Triton server (127.0.0.1 only): the tritonserver binary of nvidia-pytriton, installed without its
# dependencies (it declares numpy<2; fgad talks to its python backend through DLPack), and tritonclient.
# The tiny-model bundles through the server (~3 min) are slow-marked: `make test-slow` after this target.
test-triton: venv
	$(PY) -m pip install -q -c constraints.txt -e '.[triton-test]'
	$(PY) -m pip install -q -c constraints.txt --no-deps nvidia-pytriton
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not gpu" tests/triton

lint: venv
	$(PY) -m ruff check src tests cpp_ext/tools

# The TensorRT builder and runtime code against the TensorRT 10 stubs. The stubs go to their own folder,
# never site-packages: a stub-only tensorrt/ there would make importlib.util.find_spec("tensorrt") lie.
# The published stubs need three fixes to parse (parameters named `in`, a `bool` attribute, a default).
TRT_STUBS := $(VENV)/trt-stubs
typecheck: venv
	test -d $(TRT_STUBS)/tensorrt || $(PY) -m pip install -q --no-deps --target $(TRT_STUBS) -c constraints.txt tensorrt-stubs
	sed -i -E 's/([(,] *)in: /\1in_: /g; s/(power: Weights = None, channel_axis: int)\)/\1 = ...)/; s/^bool: DataType/bool_: DataType/' $(TRT_STUBS)/tensorrt_bindings/tensorrt.pyi
	$(VENV)/bin/mypy --config-file mypy-trt.ini

# The CUDA kernels, their CPU build and (where TensorRT headers are found) the TensorRT plugin.
cpp-ext:
	cmake -S cpp_ext -B cpp_ext/build -DCMAKE_BUILD_TYPE=Release && cmake --build cpp_ext/build -j

clean:
	rm -rf $(VENV) $(RT_VENV) $(OUT) .pytest_cache

# ---- GPU check (docs/gpu.md). `make gpu-wheels` here (PyPI reachable) fetches the wheels a lent GPU machine
# lacks into $(GPU_WHEELS) and checks them against the carry limit; `make gpu-check` there runs every GPU step
# in one command (results in $OUT); `make gpu-check GPU_CHECK_DRY=1` is its CPU dry run (CUDA steps skipped).
GPU_WHEELS   ?= .gpu-wheels
GPU_CHECK_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_CHECK_DRY ?=
.PHONY: gpu-wheels gpu-check
gpu-wheels:
	PYTHONPATH=src $(GPU_CHECK_PY) -m fgad.bench.gpucheck.wheels --dest $(GPU_WHEELS)

gpu-check:
	PYTHONPATH=src timeout -k 10 590 $(GPU_CHECK_PY) -u -m fgad.bench.gpucheck --wheels $(GPU_WHEELS) $(if $(filter-out 0,$(GPU_CHECK_DRY)),--dry)
