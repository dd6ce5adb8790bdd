# The two commands a user needs: `make demo` and `make test`. Each creates .venv from the lock file if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The machine's local CPU torch wheel; uv does not look there unless told. uv installs without bytecode unless
# told (--compile-bytecode): with PYTHONDONTWRITEBYTECODE set, every process would compile its imports, ~20 s.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
# llama-cpp-python (llama.cpp's control-vector parity tests) is a source distribution: built once per machine into
# xlalign's cache with portable flags (AVX2; 10-20 minutes on 2 cores) and installed from there. Its sdist stays in
# the cache: its convert_hf_to_gguf.py converts checkpoints to GGUF (xlalign.export.llamacpp finds it there).
LLAMA_CPP := llama_cpp_python-0.3.36
LLAMA_CACHE := $(or $(XLALIGN_CACHE),$(HOME)/.cache/xlalign)
LLAMA_FLAGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

# vLLM's CPU build (the vLLM engine's tests) needs transformers < 5.20 while TransformerLens needs 5.23 here: it gets
# its own environment, from its own lock (torchvision, torchaudio and torchcodec left out: their wheels do not match
# the CPU torch). xlalign is installed into it without dependencies, as in the main one.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test lint bench notebooks figures clean

$(STAMP): Makefile requirements.lock requirements-nodeps.lock constraints.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv || echo "uv unavailable: installing with pip"
	if [ -x $(BIN)/uv ]; then \
		$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $(FIND_LINKS) -c constraints.txt -r requirements.lock && \
		$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --no-deps -r requirements-nodeps.lock -e . ; \
	else \
		$(BIN)/pip install -q $(FIND_LINKS) -c constraints.txt -r requirements.lock && \
		$(BIN)/pip install -q --no-deps -r requirements-nodeps.lock -e . ; \
	fi
	mkdir -p $(LLAMA_CACHE)/wheels
	[ -f $(LLAMA_CACHE)/$(LLAMA_CPP).tar.gz ] || \
		$(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d $(LLAMA_CACHE)
	ls $(LLAMA_CACHE)/wheels/$(LLAMA_CPP)-*.whl > /dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_FLAGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(BIN)/pip wheel -q --no-deps -w $(LLAMA_CACHE)/wheels $(LLAMA_CACHE)/$(LLAMA_CPP).tar.gz
	$(BIN)/pip install -q --no-deps $(LLAMA_CACHE)/wheels/$(LLAMA_CPP)-*.whl
	touch $(STAMP)

$(VLLM_STAMP): Makefile requirements-vllm.lock pyproject.toml $(STAMP)
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	if [ -x $(BIN)/uv ]; then \
		$(BIN)/uv pip install -q --compile-bytecode --python $(VLLM_VENV)/bin/python $(FIND_LINKS) --no-deps -r requirements-vllm.lock && \
		$(BIN)/uv pip install -q --python $(VLLM_VENV)/bin/python --no-deps -e . ; \
	else \
		$(VLLM_VENV)/bin/pip install -q $(FIND_LINKS) --no-deps -r requirements-vllm.lock && \
		$(VLLM_VENV)/bin/pip install -q --no-deps -e . ; \
	fi
	touch $(VLLM_STAMP)

# The demo's evaluation is reduced to fit about 3 minutes on a 2-core CPU (bfloat16 where the CPU computes it
# natively; the report says how to run the full one).
demo: $(STAMP)
	$(BIN)/xlalign run --model default --corpus demo --dtype auto --loss-sentences 16 --prompts 4 --out out/demo

notebooks: $(STAMP)
	$(BIN)/python notebooks/run.py --out out/notebooks

# Every figure of results/ from its committed CSV (no model), as PNG and PDF beside it.
figures: $(STAMP)
	$(BIN)/python -m scripts.figures.steering_before_after
	$(BIN)/python -m scripts.figures.steering_pareto
	$(BIN)/python -m scripts.figures.bf16_alignment
	$(BIN)/python -m scripts.figures.lape_ablation
	$(BIN)/python -m scripts.figures.moe_routing

test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q
	$(VLLM_VENV)/bin/python -m pytest -q tests_vllm

# ruff, configured in pyproject.toml (CI runs it before the tests).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m benchmarks.cli
	$(BIN)/python -m benchmarks.capture
	$(BIN)/python -m benchmarks.steer
	$(BIN)/python -m benchmarks.stats_memory
	$(BIN)/python -m benchmarks.routing
	$(BIN)/python -m benchmarks.peers
	$(BIN)/python -m benchmarks.dtypes
	$(BIN)/python -m benchmarks.capture_memory
	$(VLLM_VENV)/bin/python -m benchmarks.vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) out
