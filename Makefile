# pibake front door. `make setup` once (root: apt-get + binfmt_misc), then
# `make image PROFILE=<host>`. See README.md.
VENV      ?= .venv
PY        := $(VENV)/bin/python
PIBAKE    := $(VENV)/bin/pibake
PROFILE   ?=
PYTEST_ARGS ?=

export LIBGUESTFS_BACKEND ?= direct

.PHONY: setup venv image all-images check render boot flash cluster-test test test-fast test-integration test-netns test-roles lint bench bench-cluster clean

setup:
	./scripts/setup-host.sh
	$(MAKE) venv

venv: $(VENV)/.done

$(VENV)/.done: pyproject.toml
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

image: venv
	@test -n "$(PROFILE)" || { echo "make image: set PROFILE=<host>, e.g. make image PROFILE=compute-01" >&2; exit 2; }
	$(PIBAKE) build $(PROFILE)

all-images: venv
	$(PIBAKE) build --all

check: venv
	$(PIBAKE) check

boot: venv
	@test -n "$(PROFILE)" || { echo "make boot: set PROFILE=<host>" >&2; exit 2; }
	$(PIBAKE) boot $(PROFILE)

flash: venv
	@test -n "$(PROFILE)" -a -n "$(DEVICE)" || { echo "make flash: set PROFILE=<host> DEVICE=/dev/sdX" >&2; exit 2; }
	$(PIBAKE) flash $(PROFILE) $(DEVICE)

cluster-test: venv
	@test -n "$(SCENARIO)" || { echo "make cluster-test: set SCENARIO=<layer>|full, e.g. make cluster-test SCENARIO=compute" >&2; exit 2; }
	$(PIBAKE) cluster-test $(SCENARIO) $(CLUSTER_TEST_ARGS)

# Every tier: lint, fast unit tests, image builds, boot tests.
test: venv
	$(PY) -m pytest -m "netns or not roles" $(PYTEST_ARGS)

# On demand: the shipped inventory's roles built and booted (heavy emulated role
# builds that do not fit CI's window beside the rest; see README "Tests").
test-roles: venv
	$(PY) -m pytest -m roles $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not integration and not boot and not netns" $(PYTEST_ARGS)

# The lanmain pair's rendered configs run by this machine's Kea and BIND in
# network namespaces (root; ~1 min).
test-netns: venv
	$(PY) -m pytest -m netns $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check builder tests
	$(VENV)/bin/mypy builder

bench: venv
	$(PY) -m builder.bench

# The shipped inventory's 8 hosts: build --all in an empty cache, then warm (about an hour here).
bench-cluster: venv
	$(PY) -m builder.bench --cluster $(BENCH_ARGS)

clean:
	rm -rf output
