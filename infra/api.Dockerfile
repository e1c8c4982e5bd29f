# The API image: Flask under gunicorn, no torch. The package is installed without its dependencies
# (torch and the rest of the ML stack are the library's), then only what the API imports
# (requirements-api.txt; tests/test_infra.py checks `import api.app` works with torch blocked).
# Build from the repository root: docker build -f infra/api.Dockerfile -t omnipersona-api .
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    OMNI_DATA_DIR=/data PORT=8000 PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
RUN groupadd --system --gid 10001 omni && useradd --system --uid 10001 --gid omni --create-home --home-dir /home/omni omni
WORKDIR /app
COPY infra/requirements-api.txt infra/requirements-api.txt
RUN pip install --no-cache-dir -r infra/requirements-api.txt
COPY pyproject.toml README.md alembic.ini Procfile ./
COPY omnipersona omnipersona
COPY api api
COPY workers workers
COPY migrations migrations
COPY infra infra
RUN pip install --no-cache-dir --no-deps -e . \
    && mkdir -p /data /tmp/prometheus && chown omni:omni /data /tmp/prometheus
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
# --graceful-timeout: on SIGTERM gunicorn finishes in-flight requests for up to this long.
CMD ["gunicorn", "--workers", "2", "--threads", "4", "--bind", "0.0.0.0:8000", "--timeout", "120", \
     "--graceful-timeout", "25", "api.wsgi:app"]
