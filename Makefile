# kmsnode — two set-up commands on a fresh Debian 12 machine: `make demo` and `make test`.
# Each target installs what it needs by itself (apt packages when missing, a virtualenv, pinned
# Python dependencies).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := softhsm2 opensc tshark umockdev gir1.2-umockdev-1.0 python3-gi python3-pyudev \
	libsrtp2-1 cryptsetup-bin dosfstools postgresql mtools
# Appliance image tests: build (mmdebstrap, erofs, cpio, apt-ftparchive for lock rebuilds) and
# boot (QEMU/TCG, OVMF with Secure Boot, swtpm as the TPM 2.0).
IMAGE_APT_PACKAGES := mmdebstrap erofs-utils qemu-system-x86 qemu-utils cpio e2fsprogs ovmf \
	swtpm swtpm-tools mtools apt-utils
# what mypyc needs to compile the codec (the venv's Python must be Debian's for python3-dev to
# be its headers; setup.py says so when they are missing)
BUILD_APT_PACKAGES := gcc python3-dev
# the codec build of `make wheel`: auto (compiled when a C compiler and headers are present,
# else pure Python), 1 (compiled or fail) or 0 (pure); see setup.py
KMSNODE_MYPYC ?= auto
COMPILED := build/compiled

.PHONY: all deps apt demo cluster-demo test test-fast test-image test-wheel test-compiled wheel lint proto \
	proto-check bench bench-mikey-compiled profile profile-switches clean

all: test

apt: .stamp-apt
# Install the apt packages of $(1) that are missing (as root, or through sudo).
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@
endef

.stamp-apt: Makefile
	$(call apt_install,$(APT_PACKAGES))

deps: $(VENV)/.stamp-deps
$(VENV)/.stamp-deps: pyproject.toml constraints.txt .stamp-apt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

proto: deps
	$(PY) scripts/gen_proto.py

proto-check: deps
	$(PY) scripts/gen_proto.py --check

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: deps lint
	$(VENV)/bin/pytest -m "not slow" --cov=firmware/mikey --cov-branch --cov-report=
	$(MAKE) test-wheel
	$(MAKE) test-compiled

# The wheel as an outside project gets it: built, installed in a fresh virtualenv, plugin_tests/
# run from it (a minute or two; pip's cache serves the dependencies after the first run).
test-wheel: deps
	$(VENV)/bin/pytest -m wheel tests/plugin

.stamp-apt-build: Makefile
	$(call apt_install,$(BUILD_APT_PACKAGES))

# The release wheel in dist/ (the one the appliance image installs): the codec compiled with
# mypyc per KMSNODE_MYPYC. Stale build output is removed first: a pure wheel must not pick up an
# extension of an earlier compiled build.
wheel: deps .stamp-apt-build
	rm -rf dist build/lib.* build/bdist.*
	KMSNODE_MYPYC=$(KMSNODE_MYPYC) $(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .

# The codec tests (tests/mikey, tests/core) against the compiled wheel, unpacked on its own with a
# copy of the tests: the unpacked tree is pytest's rootdir and first on sys.path (-P: nothing
# else before it), so nothing imports the sources, not even a plugin pytest loads first;
# test_build proves which build was loaded. No coverage here: coverage cannot see compiled code.
test-compiled: deps .stamp-apt-build
	rm -rf $(COMPILED) build/lib.* build/bdist.*
	KMSNODE_MYPYC=1 $(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(COMPILED)/dist .
	$(PY) -m zipfile -e $(COMPILED)/dist/kmsnode-*.whl $(COMPILED)/site
	cp -r tests pyproject.toml $(COMPILED)/site/
	cd $(COMPILED)/site && PYTHONPATH=$$PWD KMSNODE_EXPECT_CODEC=compiled $(abspath $(PY)) -P -m \
	  pytest -q -p no:cacheprovider -m "not slow" tests/mikey tests/core

# bench_mikey on the pure sources and on the compiled wheel of test-compiled, back to back
bench-mikey-compiled: deps
	@test -d $(COMPILED)/site || $(MAKE) test-compiled
	$(PY) -m bench.bench_mikey --compare $(COMPILED)/site --rounds 3

# Own base folder: disks and machines must not be cleaned away by a pytest run next to this one.
test-image: deps .stamp-apt-image
	$(VENV)/bin/pytest -m slow tests/image --basetemp=/var/tmp/kmsnode-image-tests

.stamp-apt-image: Makefile
	$(call apt_install,$(IMAGE_APT_PACKAGES))

demo: deps
	$(PY) -m firmware.demo

cluster-demo: deps
	$(PY) -m firmware.cluster_demo

bench: deps
	$(PY) -m bench

# py-spy profiles of the node under the benchmark's load (profiles/pairs.svg, profiles/getkeys.svg)
profile: deps
	$(PY) -m bench.profile

# The node's context switches under the same load, by the C function behind each (perf, DWARF
# stacks): profiles/pairs.switches.txt, profiles/getkeys.switches.txt
profile-switches: deps .stamp-apt-perf
	$(PY) -m bench.profile --switches

.stamp-apt-perf: Makefile
	$(call apt_install,linux-perf)

clean:
	rm -rf $(VENV) .stamp-apt .stamp-apt-image .stamp-apt-build .stamp-apt-perf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
