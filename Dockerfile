# MEOW Studio as a Docker Space (completed by the publishing issue: lint, non-root checks).
FROM python:3.11-slim

RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/app/.venv/bin:$PATH \
    MEOW_HOME=/home/user/.cache/meow_app \
    GRADIO_SERVER_NAME=0.0.0.0 \
    PORT=7860
WORKDIR /home/user/app

COPY --chown=user requirements.txt requirements-dev.txt ./
COPY --chown=user scripts ./scripts
RUN bash scripts/install.sh
COPY --chown=user . .
# Convert the embedded model at build time, so the container starts offline.
RUN python -c "from meow_app import models; models.embedded_checkpoint()"

EXPOSE 7860
CMD ["python", "app.py"]
