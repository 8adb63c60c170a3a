# Two commands for a new user: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
GPT_OSS := gpt-oss==0.0.9
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	# torch first so nothing else pulls a CUDA build (2.13.0 is a local CPU wheel here)
	$(BIN)/pip install -q torch==2.13.0
	# llama-cpp-python builds llama.cpp from source (about 7 min on 2 cores; pip caches the wheel)
	$(BIN)/pip install -q -e '.[test]'
	# OpenAI's reference model declares Python >= 3.12 but its torch code runs on 3.11
	$(BIN)/pip install -q --no-deps --ignore-requires-python $(GPT_OSS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeoss demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	@echo "see benchmarks/README.md for the scripts and their figures"

clean:
	rm -rf $(VENV) build *.egg-info
