# archadapt-server image. On x86_64, PyPI's torch 2.13.0 wheel is the CUDA build, so the same
# image adapts on an NVIDIA GPU when started with `--gpus all` and on the CPU otherwise.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/archadapt

RUN pip install torch==2.13.0

COPY pyproject.toml README.md ./
COPY clients/python clients/python
COPY archadapt archadapt
COPY meta_trainer meta_trainer
COPY server server
COPY protos protos
COPY checkpoints/default checkpoints/default
RUN pip install ./clients/python ".[gpu]"

RUN useradd --system --uid 10001 archadapt
USER archadapt
EXPOSE 50051
# The default checkpoint is found relative to the installed server package, so point at the copy.
ENTRYPOINT ["archadapt-server", "--host", "0.0.0.0", "--port", "50051", "--checkpoint", "/opt/archadapt/checkpoints/default"]
