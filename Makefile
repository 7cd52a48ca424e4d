# nflog-zmq-pcap-pipe
#   make demo    set up (as root) and run the main job: NFLOG -> ZeroMQ -> FIFO -> Suricata
#   make test    the whole test suite (system tests need root, as in CI); one layer:
#                make unit | integration | system | containers | fuzz-tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install deps test unit integration system containers fuzz-tests demo bench fuzz lint clean images up down docker-ready check-fresh

# As root, the Debian packages come first (compiler, libnetfilter_log, iptables,
# tcpdump, tshark, Suricata); then a virtualenv with the package and its commands.
install: $(BIN)/nflog-zmq-send

$(BIN)/nflog-zmq-send: pyproject.toml setup.py $(wildcard src/nflog_pipe/_native/*)
	@if [ "$$(id -u)" = 0 ]; then tools/install-deps.sh; \
	 else echo "not root: skipping Debian packages (see tools/install-deps.sh)"; fi
	@command -v $(PYTHON) >/dev/null || { echo "make install: $(PYTHON) not found: apt-get install python3 python3-venv (as root: tools/install-deps.sh)" >&2; exit 1; }
	@echo "$(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv $(VENV) || { echo "make install: '$(PYTHON) -m venv' failed: apt-get install python3-venv (tools/install-deps.sh does)" >&2; exit 1; }
	@echo "$(BIN)/pip install -q --upgrade pip"; $(BIN)/pip install -q --upgrade pip || { echo "make install: pip could not upgrade itself: check access to PyPI (proxy, certificates)" >&2; exit 1; }
	@echo "$(BIN)/pip install -q -e '.[test]'"; $(BIN)/pip install -q -e '.[test]' || { echo "make install: pip install -e '.[test]' failed: its message is above" >&2; exit 1; }
	@touch $@

deps:
	tools/install-deps.sh

test: install
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

system: install
	$(BIN)/python -m pytest tests/system $(PYTEST_ARGS)

# the Docker images, compose and manifests (root and a Docker engine; a few minutes)
containers: install docker-ready
	$(BIN)/python -m pytest tests/containers $(PYTEST_ARGS)

# the fuzz targets' short CI run (the campaign is 'make fuzz')
fuzz-tests: install
	$(BIN)/python -m pytest tests/fuzz $(PYTEST_ARGS)

demo: install
	$(BIN)/python tools/demo.py

# The install proven on pristine Debian 12 and 13 roots (debootstrap; as root, ~3 min each):
# apt-get install git make, git clone, make demo; passes only when Suricata alerts.
CHECK_FRESH_RELEASES ?= bookworm trixie
check-fresh:
	tools/check-fresh.sh $(CHECK_FRESH_RELEASES)

# The benchmark suite of issue 8 (as root, about 10 minutes): NFLOG readers side by side,
# latency, receiver throughput, memory; report in bench/results/run_all.md
bench: install
	$(BIN)/python bench/run_all.py

# Coverage-guided fuzzing campaign (atheris), FUZZ_RUNS inputs per target (docs/fuzzing.md)
FUZZ_RUNS ?= 1000000
FUZZ_TARGETS ?=
fuzz: install
	$(BIN)/python bench/fuzz.py --runs $(FUZZ_RUNS) $(if $(FUZZ_TARGETS),--targets $(FUZZ_TARGETS))

lint: install
	$(BIN)/ruff check src tests bench

# Containers (docs/deployment.md).  As root, the Docker engine and the base
# image are set up first (no registry here: debian:trixie-slim is built
# with debootstrap when it cannot be pulled).
docker-ready:
	@if [ "$$(id -u)" = 0 ]; then tools/docker/ensure-engine.sh && tools/docker/ensure-base-image.sh; fi

images: docker-ready
	docker compose --profile relays --profile tools build

up: images
	docker compose up -d --wait

down:
	docker compose --profile '*' down

clean:
	rm -rf $(VENV) build src/*.egg-info src/nflog_pipe/_nflog.* src/nflog_pipe/_records.* src/nflog_pipe/_bpf.*
