# ControlNet demo on a GPU (x86_64). See README.md, "Docker".
#   docker build -t controlnet-demo .                            # weights fetched on first use
#   docker build --build-arg BAKE_MODELS=all -t controlnet-demo .  # weights baked into the image
#   docker run --gpus all -p 7860:7860 controlnet-demo
#
# Base image: torch==2.14.1 from PyPI is a CUDA 13.0 build that brings its own CUDA runtime, cuBLAS
# and cuDNN as pip packages (nvidia-*), so the image needs no CUDA libraries of its own, only the
# host's driver, which `--gpus all` (NVIDIA Container Toolkit) mounts in. That is why this is
# NVIDIA's smallest CUDA 13.0 image ("base": libcudart only), not "runtime" or "cudnn-runtime",
# whose 2-3 GB of libraries torch would never load. Over a plain Python image it adds
# NVIDIA_REQUIRE_CUDA=cuda>=13.0, which the Container Toolkit checks against the host driver when
# the container starts (CUDA 13 needs the R580 branch or newer), so a too-old driver fails there
# with a clear message instead of torch quietly running SD1.5 on the CPU; and the NVIDIA_*
# variables that expose the GPU where --gpus is not given (Kubernetes, a default nvidia runtime).
# The tag matches torch's CUDA 13.0; Ubuntu 22.04, as it has no user with UID 1000 already.
FROM nvidia/cuda:13.0.1-base-ubuntu22.04

# Python 3.11 from the deadsnakes PPA: Ubuntu 22.04 has 3.10, and its own "python3.11" package is
# a 3.11.0 release candidate. libgl1 / libglib2.0-0: OpenCV and MediaPipe load them at import.
# Packages are not pinned to versions (hadolint DL3008): Ubuntu and the PPA drop superseded ones.
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv libgl1 libglib2.0-0 ca-certificates \
    && apt-get purge -y --auto-remove software-properties-common gpg-agent \
    && rm -rf /var/lib/apt/lists/*

# The app's packages in a virtual environment owned by root: the app cannot change them.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN python3.11 -m venv /opt/venv \
    && python -c "import sys; assert sys.version_info >= (3, 11, 4), sys.version"

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

# xformers: only a wheel built for exactly this torch loads its kernels. requirements-cuda.txt pins
# xformers 0.0.35, which is built for torch 2.10.0+cu128, so it is not installed here. Instead the
# newest xformers wheel (or the one named with --build-arg XFORMERS=xformers==X; empty: none) is
# downloaded, and installed only when its cpp_lib.json names this very torch build. Otherwise the
# image has no xformers and the app uses PyTorch SDPA (it probes xformers at start either way, and
# the page says which attention runs). As of torch 2.14.1 no xformers release matches: SDPA.
ARG XFORMERS=xformers
RUN if [ -n "$XFORMERS" ] \
        && pip download --no-deps --only-binary=:all: --dest /tmp/xformers "$XFORMERS" \
        && python -c "import glob, json, sys, zipfile, torch; \
wheel = glob.glob('/tmp/xformers/xformers-*.whl')[0]; \
built = json.loads(zipfile.ZipFile(wheel).read('xformers/cpp_lib.json'))['version']['torch']; \
print(f'{wheel} is built for torch {built}; this image has {torch.__version__}'); \
sys.exit(built != torch.__version__)"; \
    then pip install --no-deps /tmp/xformers/xformers-*.whl; \
    else echo "No xformers built for this torch: the app will use PyTorch SDPA."; \
    fi \
    && rm -rf /tmp/xformers

# UID 1000, as Hugging Face Spaces and most hosts expect; the code and any baked weights stay
# owned by root (read-only for the app). Its Hub cache and Gradio's uploads go to writable places.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin app
COPY . .

# Weights baked into MODELS_DIR (default: none, fetched on first use into HF_HOME):
#   --build-arg BAKE_MODELS=all               every role (roughly 32 GB in fp32)
#   --build-arg BAKE_MODELS="base canny"      those roles, space-separated (`python -m cli download -h`)
#   --build-arg BAKE_PRECISION=fp32           full-precision files (default fp16: half the size;
#                                             a GPU runs fp16 anyway, a CPU upcasts them)
# A temporary HF_HOME, so that nothing root-owned is left in the app user's cache.
ARG BAKE_MODELS=""
ARG BAKE_PRECISION=fp16
# hadolint ignore=SC2086
RUN if [ "$BAKE_MODELS" = all ]; then \
        HF_HOME=/tmp/hf-bake python -m cli download --all --precision "$BAKE_PRECISION" \
            --models-dir /app/models; \
    elif [ -n "$BAKE_MODELS" ]; then \
        HF_HOME=/tmp/hf-bake python -m cli download $BAKE_MODELS --precision "$BAKE_PRECISION" \
            --models-dir /app/models; \
    fi \
    && rm -rf /tmp/hf-bake

USER 1000
ENV HOME=/home/app \
    HF_HOME=/home/app/.cache/huggingface \
    GRADIO_TEMP_DIR=/tmp/gradio \
    MODELS_DIR=/app/models \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
