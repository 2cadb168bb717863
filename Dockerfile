# A first working image (CPU, or GPU with `docker run --gpus all`: the torch wheels bundle CUDA).
#   docker build -t controlnet-demo .
#   docker run --gpus all -p 7860:7860 -v $PWD/models:/app/models controlnet-demo
FROM python:3.11-slim

# libgl1 / libglib2.0-0: OpenCV and MediaPipe load them at import.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 app
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY --chown=app:app . .

USER app
ENV HF_HOME=/home/app/.cache/huggingface \
    MODELS_DIR=/app/models \
    GRADIO_ANALYTICS_ENABLED=False \
    PYTHONUNBUFFERED=1
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
