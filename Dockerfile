# syntax=docker/dockerfile:1
# Rosetta images, one file, three targets (docs/deployment.md):
#
#   docker build --target server     -t rosetta-mt/server:0.1.0 .      CPU server, no torch
#   docker build --target server-gpu -t rosetta-mt/server-gpu:0.1.0 .  the same server on CUDA 13 + cuDNN 9
#   docker build --target train      -t rosetta-mt/train:0.1.0 .       rosetta-train and rosetta-export (torch CPU)
#
# Every image runs as the same non-root user (uid 10001), so the model repository and run
# volumes that they share stay writable by whichever of them created them.

# Python 3.12 on Debian 13; the server's wheels (onnxruntime-gpu, grpcio, sentencepiece) all ship for it.
ARG PYTHON_IMAGE=python:3.12-slim-trixie
# onnxruntime-gpu 1.31.1 is built against CUDA 13.0 and cuDNN 9 (its build_and_package_info says
# cuda_version 13.0; its [cudnn] extra wants nvidia-cudnn-cu13 9.x). 13.0 needs a host driver >= 580.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
# Must equal the torch pin of the [train] extra in pyproject.toml (a test checks).
ARG TORCH_VERSION=2.13.0
# CPU wheels: training here means CPUs (docs/training.md). For a CUDA 13 training image build
# with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# ---- the project as a wheel, built once for every target -------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY model model
COPY export export
COPY server server
COPY client client
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- CPU server ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS server-venv
COPY --from=wheel /wheels /wheels
# The runtime and the service: onnxruntime, grpc, sentencepiece... and no torch.
RUN python -m venv /opt/rosetta \
    && /opt/rosetta/bin/pip install --no-cache-dir "$(echo /wheels/rosetta_mt-*.whl)[serve]"

FROM ${PYTHON_IMAGE} AS server
RUN useradd --uid 10001 --user-group --home-dir /app --no-create-home rosetta
COPY --from=server-venv /opt/rosetta /opt/rosetta
ENV PATH=/opt/rosetta/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# The committed default model. Owned by the service user so a volume seeded from it takes exports.
COPY --chown=rosetta:rosetta models models
USER rosetta
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["rosetta-healthcheck"]
CMD ["rosetta-serve", "--host", "0.0.0.0"]

# ---- GPU server: the same server on NVIDIA's CUDA + cuDNN runtime ----------------------------
FROM ${CUDA_IMAGE} AS gpu-python
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-python AS server-gpu-venv
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /wheels /wheels
RUN python3 -m venv /opt/rosetta \
    && /opt/rosetta/bin/pip install --no-cache-dir "$(echo /wheels/rosetta_mt-*.whl)[serve]"

FROM gpu-python AS server-gpu
RUN useradd --uid 10001 --user-group --home-dir /app --no-create-home rosetta
COPY --from=server-gpu-venv /opt/rosetta /opt/rosetta
ENV PATH=/opt/rosetta/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
COPY --chown=rosetta:rosetta models models
USER rosetta
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["rosetta-healthcheck"]
# --device cuda: without a usable GPU the server refuses to start instead of quietly using the CPU.
CMD ["rosetta-serve", "--host", "0.0.0.0", "--device", "cuda"]

# ---- training and export ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS train
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
# tcmalloc: about 1.15x faster CPU training (docs/training.md); preloaded through an arch-free path.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libtcmalloc-minimal4t64 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/local/lib/libtcmalloc_minimal.so.4
COPY --from=wheel /wheels /wheels
# torch first, from its own index, so that the [export] extra finds its pin already satisfied.
RUN python -m venv /opt/rosetta \
    && /opt/rosetta/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && /opt/rosetta/bin/pip install --no-cache-dir "$(echo /wheels/rosetta_mt-*.whl)[export]" \
    && rm -rf /wheels
RUN useradd --uid 10001 --user-group --home-dir /app --no-create-home rosetta
ENV PATH=/opt/rosetta/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LD_PRELOAD=/usr/local/lib/libtcmalloc_minimal.so.4
WORKDIR /app
# The default model repository: its version is what fine-tuning starts from (--init-from
# models/en-es/11), and a volume first created by an export is seeded like the server's; runs/
# exists so its volume belongs to the user.
COPY --chown=rosetta:rosetta models models
RUN install -d -o rosetta -g rosetta runs data
USER rosetta
# The default model's recipe (Makefile: train-default) on data/en-es; compose runs a fine-tune instead.
CMD ["rosetta-train", "--train", "data/en-es/train.tsv", "--valid", "data/en-es/valid.tsv", "--out", "runs/en-es", \
     "--vocab-size", "8000", "--lr", "7e-4", "--warmup-steps", "800", "--max-steps", "12000", "--eval-every", "500", \
     "--save-every", "100", "--valid-bleu-sentences", "400"]
