# Two commands for a new user: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
GPT_OSS := gpt-oss==0.0.9
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

SYSTEM_PKGS := openjdk-17-jdk-headless junit4

.PHONY: install system-deps demo test bench clean

# JDK + JUnit 4 for the Android demo's JVM tests (Debian packages; installed only when missing, as root)
system-deps:
	@command -v javac >/dev/null && test -f /usr/share/java/junit4.jar || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PKGS); }

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

install: $(STAMP) system-deps

demo: $(STAMP)
	$(BIN)/edgeoss demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q --durations=15 tests

bench: $(STAMP)
	@echo "see benchmarks/README.md for the scripts and their figures"

clean:
	rm -rf $(VENV) build *.egg-info
