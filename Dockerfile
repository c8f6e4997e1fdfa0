# One image for every shard; the pair and the Redis URL come from the environment.
#   docker build -t shard .
#   docker run --rm -e SHARD_PAIR=BTC-USDT -e REDIS_URL=redis://redis:6379/0 shard
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin shard
WORKDIR /app

# Dependencies first, in their own layer, rebuilt only when the lock changes: the runtime lock
# (scripts/lock makes it), every file checked against its sha256, the versions CI tested. The
# image runs the daemon, so it has neither the dev tools nor the load extra (`shard load`).
COPY requirements.txt ./
RUN pip install --require-hashes -r requirements.txt

# Then the package itself, without dependencies: the lock has them all.
COPY pyproject.toml README.md ./
COPY shard ./shard
COPY config ./config
RUN pip install --no-deps . && rm -rf build

USER 10001:10001
ENV SHARD_CONFIG=/app/config/shard.toml

# Healthy while the daemon's heartbeat key is fresh (SHARD_PAIR and REDIS_URL from the env).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["shard", "health"]

ENTRYPOINT ["shard"]
CMD ["run"]
