#!/usr/bin/env bash
# shellcheck disable=SC2015 # ok and fail always succeed: "test && ok || fail" is an if-else
# scripts/mariadb-private in a bare container (issue 18, finding 9): where neither the host's
# name nor `localhost` resolves, mariadb-install-db aborts unless given --force. The test makes
# that situation in private mount and UTS namespaces (an empty /etc/hosts bound over the real
# one, an unknown hostname), starts a private server there, checks that it answers, stops it.
# Needs root for unshare -m; exits 77 (skipped) without it.
# ctest-labels: nosan
set -u
: "${COINGEST_SOURCE_DIR:?run through ctest}"

if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null 2>&1; then
  echo "SKIP: needs root and unshare to fake a host whose name does not resolve"
  exit 77
fi
command -v mariadb-install-db >/dev/null 2>&1 || command -v mysql_install_db >/dev/null 2>&1 ||
  { echo "SKIP: mariadb-install-db not installed (apt-get install mariadb-server)"; exit 77; }
tmp=$(mktemp -d /tmp/coingest-mpriv.XXXXXX)
cleanup() {
  "$COINGEST_SOURCE_DIR/scripts/mariadb-private" stop "$tmp/db" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
: >"$tmp/hosts"

if ! unshare -mu true 2>/dev/null; then
  echo "SKIP: unshare -mu is not permitted here"
  exit 77
fi
# shellcheck disable=SC2016 # expanded by the inner shell
timeout 180 unshare -mu bash -c '
  mount --bind "$1/hosts" /etc/hosts && hostname coingest-test-no-such-host || exit 3
  if getent hosts localhost >/dev/null; then echo "note: localhost still resolves here"; fi
  "$2/scripts/mariadb-private" start "$1/db" >"$1/env" || exit 1
  mariadb --no-defaults -S "$1/db/mariadb.sock" -ucoingest -pprivate-db-pw -e "SELECT 1" coingest >/dev/null || exit 2
' _ "$tmp" "$COINGEST_SOURCE_DIR"
rc=$?
case $rc in
  0) echo "ok: a private MariaDB starts where the hostname does not resolve" ;;
  3) echo "SKIP: cannot bind-mount /etc/hosts or set the hostname here"; exit 77 ;;
  *) echo "FAIL: mariadb-private start with an unresolvable hostname (rc $rc)"
     tail -n 8 "$tmp/db/install.log" 2>/dev/null
     exit 1 ;;
esac
