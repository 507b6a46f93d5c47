#!/bin/sh
# coingest-entrypoint: the container's entrypoint (run by tini, see the Dockerfile).
#
#   (no arguments) or options   apply pending migrations, then exec coingestd in the foreground
#                               with -c "$COINGEST_CONFIG" and the options
#   any other command           exec that command instead (e.g. `docker run ... coingest sh`)
#
# Environment:
#   COINGEST_CONFIG             configuration file (default /etc/coingest/coingest.conf)
#   COINGEST_SKIP_MIGRATIONS=1  do not run `coingestd --migrate` first (the daemon still
#                               applies them itself when [database] auto_migrate is true)
#   COINGEST_DB_PASSWORD(_FILE), COINGEST_COINGECKO_API_KEY(_FILE), COINGEST_DB_HOST, ...
#                               read by coingestd itself (see etc/coingest.conf)
# Migrations are applied before the daemon starts so that a schema problem fails the container
# at once with a clear message, before any data is fetched. exec keeps the daemon the direct
# child of tini, so it receives SIGTERM and SIGHUP itself.
set -eu

CONF=${COINGEST_CONFIG:-/etc/coingest/coingest.conf}

case "${1:-}" in
'' | -*) ;;
*) exec "$@" ;;
esac

if [ ! -r "$CONF" ]; then
    echo "coingest-entrypoint: cannot read the configuration $CONF (mount one, or set COINGEST_CONFIG)" >&2
    exit 78
fi

if [ "${COINGEST_SKIP_MIGRATIONS:-0}" != 1 ]; then
    coingestd --migrate -c "$CONF"
fi

exec coingestd -c "$CONF" "$@"
