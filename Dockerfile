# syntax=docker/dockerfile:1
# coingestd in a container: a Debian build stage, a slim Debian runtime with only the shared
# libraries the daemon links (tests/integration/test_container.sh checks this list against
# `ldd coingestd`), a non-root user, tini as PID 1 forwarding signals to the daemon, and a
# HEALTHCHECK on /healthz. See docs/operations.md ("Container").
#
#   docker build -t coingest .
#   docker compose up -d                 # with MariaDB, see docker-compose.yml

ARG DEBIAN_RELEASE=bookworm

FROM debian:${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config \
        libuv1-dev libcurl4-openssl-dev libjansson-dev libmariadb-dev libinih-dev \
        zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Installed under /usr so the built-in defaults match the image: /usr/sbin/coingestd,
# /etc/coingest/coingest.conf, migrations in /usr/share/coingest/sql.
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF \
        -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_INSTALL_SYSCONFDIR=/etc \
 && cmake --build /build -j"$(nproc)" --target coingestd \
 && DESTDIR=/staging cmake --install /build \
 && strip --strip-debug /staging/usr/sbin/coingestd

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Runtime libraries only (one per line; the container test parses this list). curl is for the
# HEALTHCHECK; it adds little since libcurl4 is needed anyway.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libuv1 \
        libcurl4 \
        libjansson4 \
        libmariadb3 \
        libinih1 \
        zlib1g \
        libssl3 \
        ca-certificates \
        curl \
        tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 coingest \
 && useradd --system --uid 10001 --gid coingest --home-dir /var/lib/coingest \
        --shell /usr/sbin/nologin coingest \
 && install -d -o coingest -g coingest -m 0700 /var/lib/coingest /var/lib/coingest/spool

COPY --from=build /staging/usr/sbin/coingestd /usr/sbin/coingestd
COPY --from=build /staging/usr/share/coingest/sql/ /usr/share/coingest/sql/
COPY docker/coingest.conf /etc/coingest/coingest.conf
COPY docker/entrypoint.sh /usr/local/bin/coingest-entrypoint

# COINGEST_CONFIG: the file the entrypoint passes with -c (mount yours over it).
# Secrets come from the environment: COINGEST_DB_PASSWORD or COINGEST_DB_PASSWORD_FILE
# (e.g. /run/secrets/db_password), COINGEST_COINGECKO_API_KEY(_FILE).
ENV COINGEST_CONFIG=/etc/coingest/coingest.conf \
    COINGEST_HEALTHCHECK_URL=http://127.0.0.1:9464/healthz

USER 10001:10001
WORKDIR /var/lib/coingest
VOLUME ["/var/lib/coingest"]
EXPOSE 9464

# /healthz answers 503 when the database has been unreachable for longer than
# [daemon] health_db_grace (default 5m; a shorter outage is 200 with "db":"down", the rows wait
# in the spool) or when rows were lost; a stuck loop does not answer and --max-time fails it.
# curl -f turns a 503 into a failed check. Startup (migrations, first connection) gets a grace
# period. See docs/operations.md ("/healthz").
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS --max-time 4 "$COINGEST_HEALTHCHECK_URL" >/dev/null || exit 1

# tini is PID 1: it forwards SIGTERM/SIGINT/SIGHUP to the entrypoint and then to the daemon
# (which the entrypoint execs, so it receives them directly) and reaps zombies.
# `docker stop` sends SIGTERM and waits 10s by default: give it more than shutdown_timeout
# (`docker stop -t 45`, or stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/coingest-entrypoint"]
CMD []
