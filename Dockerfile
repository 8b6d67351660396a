# The LeadPulse image: one image for every process (`leadpulse worker | collector | alerts | …`).
#   docker build -t leadpulse .
#   docker run --rm -e LEADPULSE_KAFKA_BOOTSTRAP=kafka:9092 -e LEADPULSE_REDIS_URL=redis://redis:6379/0 leadpulse
FROM python:3.11-slim AS build
WORKDIR /src
# src/leadpulse/schemas is a symlink to ../../schemas: both are needed to build the wheel.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEADPULSE_HTTP_HOST=0.0.0.0
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/leadpulse leadpulse
COPY --from=build /wheels /wheels
# The wheel and its runtime dependencies only (no dev extras).
RUN pip install /wheels/*.whl && rm -rf /wheels
USER 10001
# Faust keeps a small <group>-data directory in the working directory.
WORKDIR /var/lib/leadpulse
EXPOSE 6066
ENTRYPOINT ["leadpulse"]
CMD ["worker"]
