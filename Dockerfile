# archadapt-server image for NVIDIA GPU hosts; it falls back to the CPU where no GPU is visible.
#
#   docker build -t archadapt .
#   docker run --gpus all -p 50051:50051 -p 9464:9464 -v archadapt-data:/data archadapt
#
# The build stage installs everything into /opt/venv. The runtime stage copies that environment,
# the server code and the committed checkpoint, and runs as an unprivileged user.
#
# torch comes from PyTorch's CUDA 12.8 wheel index. onnxruntime-gpu from PyPI is built for
# CUDA 12 with cuDNN 9, the same major versions as those wheels, and it loads the CUDA and cuDNN
# libraries that torch's nvidia-* packages install, because the server imports torch first.
# NOTE: change TORCH_CUDA and the onnxruntime-gpu release together. The server logs the
# onnxruntime providers that actually loaded at start, which shows a mismatch as a CPU fallback.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY clients/python clients/python
COPY archadapt archadapt
COPY meta_trainer meta_trainer
COPY server server
RUN pip install --no-cache-dir ./clients/python "/src[gpu]"


FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE

RUN useradd --system --uid 10001 --home-dir /opt/archadapt --shell /usr/sbin/nologin archadapt \
    && mkdir -p /data \
    && chown archadapt /data

COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/archadapt
COPY checkpoints/default checkpoints/default

USER 10001

# Jobs and models persist under /data (--data-dir).
VOLUME ["/data"]
# gRPC (Adaptation, health checking, reflection) and Prometheus metrics.
EXPOSE 50051 9464

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "server.healthcheck", "--port", "50051"]

# The default checkpoint is found relative to the installed server package, so point at the copy.
# Jobs, datasets and models go to the /data volume, so a restarted container resumes its jobs.
ENTRYPOINT ["archadapt-server"]
CMD ["--host", "0.0.0.0", "--port", "50051", "--checkpoint", "/opt/archadapt/checkpoints/default", "--data-dir", "/data", "--metrics-port", "9464"]
