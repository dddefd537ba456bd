# vit-tch: `make train` and `make test` work from a fresh clone.
# Python (torch 2.11.0 for libtorch, and the reference scripts) lives in .venv. make's cargo
# builds with LIBTORCH_USE_PYTORCH=1 and .venv's Python first on PATH: torch-sys then takes
# libtorch's folder and C++ ABI from that torch and checks its version (2.11.0 for tch
# 0.24). A plain `cargo` finds libtorch through .venv/libtorch instead (.cargo/config.toml).

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.requirements-installed
VIT        := target/release/vit
DATA_DIR   ?= data
DATASET    ?= cifar100
ARGS       ?=

SHARED     ?= ../shared
# $(call quote,TEXT): TEXT as one shell word, whatever it holds (spaces, quotes).
quote       = '$(subst ','\'',$(1))'
CARGO      := LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=$(call quote,$(CURDIR)/$(VENV)) PATH=$(call quote,$(CURDIR)/$(VENV)/bin):"$$PATH" cargo

.PHONY: setup build fixtures test lint train bench device clean

# The requirements are installed when the venv is missing or requirements.txt changed. A
# first install (torch with its CUDA libraries, 4.8 GiB) plus the build needs at least
# SETUP_FREE_GIB free (measured: 5.8): checked first, so that a full disk stops it with a
# plain message, not midway through pip. A disk whose free space df cannot tell is not
# checked.
SETUP_FREE_GIB ?= 6
# The pinned numpy 2.3 needs Python 3.11+: checked before the venv is made, so that an
# older one stops with a plain message, not in pip. A venv make starts and `venv` fails to
# finish (a system without Python's venv package) is removed, so that the next make starts
# it afresh; a venv without pip that was there before gets pip from ensurepip, and nothing
# else at .venv is ever removed.
VENV_MODULE_HINT := install Python's venv module (on Debian or Ubuntu, the python3-venv package) and run make again
# $(call python_3_11,PYTHON,ADVICE): stops, with ADVICE, unless PYTHON runs and is 3.11+.
python_3_11 = version=$$($(1) -c 'import sys; print(sys.version.split()[0]); sys.exit(sys.version_info < (3, 11))' 2>/dev/null) || { \
	    echo "error: the pinned requirements need Python 3.11 or newer, but $(1) is $${version:-not found}. $(2)"; exit 1; }
NEW_PYTHON_HINT := Install one and pass it, for example make PYTHON_SYS=python3.12
comma := ,
setup: $(STAMP)
$(STAMP): requirements.txt
	@if test ! -e $(VENV) && test ! -L $(VENV); then \
	    $(call python_3_11,"$(PYTHON_SYS)",$(NEW_PYTHON_HINT)); \
	    echo "$(PYTHON_SYS) -m venv $(VENV)"; \
	    "$(PYTHON_SYS)" -m venv $(VENV) || { rm -rf $(VENV); echo "error: $(PYTHON_SYS) -m venv failed (above); $(VENV_MODULE_HINT)"; exit 1; }; \
	elif test ! -f $(VENV)/pyvenv.cfg; then \
	    echo "error: $(VENV) is there but is not a Python venv (it has no pyvenv.cfg); move it away and run make again"; exit 1; \
	elif ! $(PY) -c '' 2>/dev/null; then \
	    echo "error: $(PY) does not run (is the Python $(VENV) was made from gone?); remove it (rm -rf $(VENV)) and run make again"; exit 1; \
	else \
	    $(call python_3_11,$(PY),Remove $(VENV) (rm -rf $(VENV)) and run make with a newer Python$(comma) for example make PYTHON_SYS=python3.12); \
	    if ! $(PY) -m pip --version >/dev/null 2>&1; then \
	        echo "$(VENV) has no pip: adding it with ensurepip"; \
	        $(PY) -m ensurepip >/dev/null || { echo "error: $(VENV) has no pip, and ensurepip cannot add it; $(VENV_MODULE_HINT)"; exit 1; }; \
	    fi; \
	fi
	@$(PY) -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' || { \
	    free=$$(df -Pk $(VENV) 2>/dev/null | awk 'NR == 2 && $$4 ~ /^[0-9]+$$/ { print int($$4 / 1048576) }'); \
	    test -z "$$free" || test "$$free" -ge $(SETUP_FREE_GIB) || { \
	        echo "error: installing torch 2.11 into $(VENV) and building needs at least $(SETUP_FREE_GIB) GiB free, but the disk holding $(VENV) has $$free GiB free. Free some space and run make again."; \
	        exit 1; }; }
	$(PY) -m pip install --quiet -r requirements.txt
	ln -sfn "$$($(PY) -c 'import torch, os; print(os.path.dirname(torch.__file__))')" $(VENV)/libtorch
	touch $@

build: setup
	$(CARGO) build --release

fixtures: setup
	$(PY) tests/reference/make_fixtures.py
	$(PY) tests/reference/rollout.py
	$(PY) tests/reference/augment_reference.py
	$(PY) tests/reference/jpeg_reference.py
	$(PY) tests/reference/png_reference.py

test: build fixtures
	VIT_PYTHON=$(PY) $(CARGO) test --release

# Also: git tracks nothing outside the project's layout (a manual test's run folder was
# once committed by mistake); the list names every top-level entry the project has.
TRACKED := ^(\.cargo|\.ci|assets|bench|docs|src|tests)/|^(\.gitignore|Cargo\.toml|Cargo\.lock|Makefile|README\.md|build\.rs|requirements\.txt|data/README\.md)$$
lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --release --no-deps --document-private-items
	@stray=$$(git ls-files 2>/dev/null | grep -Ev '$(TRACKED)'); test -z "$$stray" || { \
	    echo "error: git tracks files outside the project's layout (git rm them, or add them to TRACKED in the Makefile):"; \
	    echo "$$stray"; exit 1; }

# Checked before anything is installed or built: `vit train` refuses a flag given twice.
ifneq ($(filter train,$(MAKECMDGOALS)),)
ifneq ($(filter --dataset% --data-dir%,$(ARGS)),)
$(error ARGS names --dataset or --data-dir, which make train sets itself: pass DATASET=... or DATA_DIR=... instead, for example make train DATASET=cifar10)
endif
endif

# The notebook's training run: CIFAR-100 (downloaded if missing), the notebook model.
# DATASET=cifar10|cifar100|folder and DATA_DIR choose the data (a folder dataset is not
# downloaded); ARGS adds `vit train` flags other than those two.
# (A failed download names VIT_DATA_MIRROR, which `vit download` reads as its --from.)
ifneq ($(filter train,$(MAKECMDGOALS)),)
ifeq ($(filter cifar10 cifar100 folder,$(DATASET)),)
$(error DATASET=$(DATASET): make train takes DATASET=cifar10, cifar100 or folder)
endif
endif
DATA_FLAGS = --dataset $(call quote,$(DATASET)) --data-dir $(call quote,$(DATA_DIR))
# vit's advice names its flags; under make, two of them are variables. Not after a stop
# (status 130: Ctrl-C, or a signal), which the error above is not.
UNDER_MAKE_HINT := status=$$?; test $$status -eq 130 || echo "make train: where the error above says --dataset or --data-dir, pass DATASET=... or DATA_DIR=... to make"; exit $$status
# `ARGS=--help` shows vit train's flags without downloading a dataset first.
train: build
	$(if $(filter folder,$(DATASET))$(filter -h --help,$(ARGS)),,$(VIT) download $(DATA_FLAGS) || { $(UNDER_MAKE_HINT); })
	$(VIT) train $(DATA_FLAGS) $(ARGS) || { $(UNDER_MAKE_HINT); }

# Side-by-side throughput against PyTorch (see bench/README.md).
bench: build
	$(PY) bench/compare.py --vit $(VIT) $(ARGS)

# What bench/gpu.sh needs on a GPU machine that has torch but no Rust and no network, in
# the git-ignored .device/ (the device tool's `carry`): vit, the test binaries with CUDA
# checks, the CIFAR-10 JPEG converter and archive from $(SHARED).
DEVICE_TESTS := cuda_graph precision augment data
SHARED_FILES = $(call quote,$(SHARED)/tools/cifar10-jpeg-to-bin) $(call quote,$(SHARED)/data/cifar10-jpeg.tar.gz)
device: build
	@for file in $(SHARED_FILES); do test -f "$$file" || { \
	    echo "error: $$file is missing: make device copies it from SHARED ($(SHARED)); pass SHARED=DIR, the folder that holds tools/ and data/"; exit 1; }; done
	rm -rf .device/tests
	mkdir -p .device/tests
	cp -f $(VIT) $(SHARED_FILES) .device/
	$(CARGO) test --release --no-run --message-format=json $(DEVICE_TESTS:%=--test %) > .device/build.json
	$(PY) -c 'import json, shutil, sys; [shutil.copy(m["executable"], ".device/tests/" + m["target"]["name"]) for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["kind"] == ["test"]]' < .device/build.json
	rm .device/build.json
	test "$$(ls .device/tests | wc -l)" -eq $(words $(DEVICE_TESTS)) || { \
	    echo "error: .device/tests should hold the $(words $(DEVICE_TESTS)) test binaries $(DEVICE_TESTS)"; exit 1; }

# The build, make device's copies of it, and the venv make set up: a .venv that is not a
# venv is left, as setup leaves it; a link is removed, not what it points to.
clean:
	cargo clean
	rm -rf .device
	@if test -L $(VENV); then rm -f $(VENV); \
	elif test -f $(VENV)/pyvenv.cfg; then echo "rm -rf $(VENV)"; rm -rf $(VENV); \
	elif test -e $(VENV); then echo "note: $(VENV) is not a Python venv (it has no pyvenv.cfg): left as it is"; fi
