#!/usr/bin/env bash
# shellcheck disable=SC2015 # ok and fail always succeed: "test && ok || fail" is an if-else
# scripts/quickstart as a newcomer runs it (issue 18, findings 4, 6 and 9), with the built
# daemon (QUICKSTART_COINGESTD: no build) and its ./var in a temp dir (QUICKSTART_VAR):
#   --help            lists --once and --stop, and no line of the script itself
#   online, no net    stops at once (QUICKSTART_PROBE names a closed port) and points to --offline
#   --offline --once  with 127.0.0.1:9464 taken, picks another metrics port; the recorded data
#                     lands: every price row carries volume and market cap and the recording's
#                     time, so a second prices run adds no row; says how to stop the server
#   --stop            stops the private MariaDB
#   -c FILE           a config whose socket is the quickstart's starts the private MariaDB
# ctest-labels: nosan
set -u
: "${COINGESTD:?run through ctest}" "${COINGEST_SOURCE_DIR:?run through ctest}"
qs=$COINGEST_SOURCE_DIR/scripts/quickstart

failed=0
passed=0
ok() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "FAIL: $1"; }
contains() { # haystack, needle, what
  if printf '%s' "$1" | grep -qF -- "$2"; then ok "$3"; else fail "$3: no \"$2\" in: $1"; fi
}

tmp=$(mktemp -d /tmp/coingest-quickstart.XXXXXX)
holder=""
fake=""
cleanup() {
  [ -n "$holder" ] && kill "$holder" 2>/dev/null
  [ -n "$fake" ] && kill "$fake" 2>/dev/null
  "$COINGEST_SOURCE_DIR/scripts/mariadb-private" stop "$tmp/var/mariadb" >/dev/null 2>&1
  if [ "$failed" = 0 ]; then rm -rf "$tmp"; else echo "kept $tmp"; fi
}
trap cleanup EXIT
export QUICKSTART_VAR=$tmp/var QUICKSTART_COINGESTD=$COINGESTD
sql() { mariadb --no-defaults -S "$tmp/var/mariadb/mariadb.sock" -ucoingest -pprivate-db-pw -N -B coingest -e "$1"; }

out=$("$qs" --help 2>&1); rc=$?
[ $rc = 0 ] && ok "--help exits 0" || fail "--help exit $rc"
for w in --offline --once --stop "-c FILE"; do contains "$out" "$w" "--help lists $w"; done
if printf '%s' "$out" | grep -q 'set -euo'; then fail "--help prints a line of the script"; else ok "--help is only the text"; fi

start=$(date +%s)
out=$(QUICKSTART_PROBE=127.0.0.1:1 timeout 60 "$qs" 2>&1); rc=$?
[ $rc = 69 ] && ok "online without a network exits 69" || fail "online without a network: exit $rc: $out"
contains "$out" "scripts/quickstart --offline" "it points to --offline"
[ $(($(date +%s) - start)) -le 15 ] && ok "and says so at once" || fail "took $(($(date +%s) - start)) s"

# Hold 127.0.0.1:9464 (if nobody else does already) while the quickstart runs.
python3 -c 'import socket,time
s=socket.socket(); s.bind(("127.0.0.1",9464)); s.listen(); time.sleep(600)' 2>/dev/null &
holder=$!
sleep 0.3

out=$(timeout 300 "$qs" --offline --once assets,market_caps,prices 2>&1); rc=$?
[ $rc = 0 ] && ok "--offline --once exits 0" || fail "--offline --once: exit $rc: $(printf '%s' "$out" | tail -n 20)"
contains "$out" "scripts/quickstart --stop" "it says how to stop the private MariaDB"
port=$(sed -n 's/^metrics_listen = 127.0.0.1:\([0-9]*\)$/\1/p' "$tmp/var/coingest.conf")
[ -n "$port" ] && [ "$port" != 9464 ] && ok "9464 taken: metrics on $port" || fail "metrics port '$port' with 9464 taken"
kill "$holder" 2>/dev/null; holder=""

# The offline data (the 2025-02-09 markets page): complete price rows with the recording's time.
# Prices cover every coin of the page (its 250 rows are the market snapshots): the offline coin
# list (July 2025) holds them all.
want=$(sql "SELECT COUNT(*) FROM assets WHERE id IN (SELECT asset_id FROM market_snapshots)")
n=$(sql "SELECT COUNT(*) FROM prices")
[ "$n" = "$want" ] && [ "$want" = 250 ] && ok "a price for each of the $want listed coins on the recorded page" ||
  fail "$n price rows, want $want"
echo "note: $(sql "SELECT COUNT(*) FROM assets") assets, $(sql "SELECT COUNT(*) FROM market_snapshots") snapshots, $n prices"
n=$(sql "SELECT COUNT(*) FROM prices WHERE volume_24h IS NULL OR market_cap IS NULL")
[ "$n" = 0 ] && ok "every price row has volume and market cap" || fail "$n price rows lack volume or market cap"
btc=$(sql "SELECT source_updated_at FROM prices WHERE asset_id = 'bitcoin'")
[ "$btc" = "2025-02-09 17:44:04.000" ] && ok "prices carry the recording's time" || fail "bitcoin's source_updated_at is $btc"
before=$(sql "SELECT COUNT(*) FROM prices")
out=$(timeout 300 "$qs" --offline --once prices 2>&1); rc=$?
after=$(sql "SELECT COUNT(*) FROM prices")
[ $rc = 0 ] && [ "$after" = "$before" ] && ok "a second prices run adds no row ($after)" ||
  fail "second prices run: exit $rc, rows $before -> $after"

out=$("$qs" --stop 2>&1); rc=$?
if [ $rc = 0 ] && ! kill -0 "$(cat "$tmp/var/mariadb/mariadb.pid" 2>/dev/null)" 2>/dev/null; then
  ok "--stop stops the private MariaDB"
else
  fail "--stop: exit $rc, server still running: $out"
fi

# -c with a copy of the quickstart's config (a fresh fake API): the private server starts.
rm -f "$tmp/fake.port"
python3 "$COINGEST_SOURCE_DIR/tests/fakeapi/fakeapi.py" --port 0 --port-file "$tmp/fake.port" \
  --fixtures "$COINGEST_SOURCE_DIR/tests/fixtures" >"$tmp/fake.log" 2>&1 &
fake=$!
for _ in $(seq 1 100); do [ -s "$tmp/fake.port" ] && break; sleep 0.1; done
sed "s|^base_url = .*|base_url = http://127.0.0.1:$(cat "$tmp/fake.port")/api/v3|" \
  "$tmp/var/coingest.conf" >"$tmp/mine.conf"
out=$(timeout 300 "$qs" -c "$tmp/mine.conf" --once prices 2>&1); rc=$?
[ $rc = 0 ] && ok "-c FILE with the quickstart's socket starts the private MariaDB and runs" ||
  fail "-c FILE: exit $rc: $(printf '%s' "$out" | tail -n 10)"
"$qs" --stop >/dev/null

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
