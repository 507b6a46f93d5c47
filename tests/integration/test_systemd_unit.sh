#!/usr/bin/env bash
# test_systemd_unit: checks systemd/coingestd.service.
#
# 1. The directives the daemon relies on are present (always checked).
# 2. `systemd-analyze verify` accepts the unit without a single warning. The unit names
#    /usr/sbin/coingestd, which is not installed here, so a copy with ExecStart pointing at the
#    built binary ($COINGESTD) is verified instead.
# 3. `systemd-analyze security --offline=true` rates it "OK" (exposure <= 2.0), where this
#    systemd supports offline analysis (systemd >= 250).
# Exits 77 (skipped) when systemd-analyze is not installed, after the static checks.
set -euo pipefail

src=${COINGEST_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
unit="$src/systemd/coingestd.service"
fail=0

[[ -f $unit ]] || { echo "FAIL: $unit missing"; exit 1; }

require() {
    if ! grep -Eq "^$1\$" "$unit"; then
        echo "FAIL: $unit lacks a line matching: $1"
        fail=1
    fi
}
require 'Type=notify'
require 'ExecStart=/usr/sbin/coingestd -c /etc/coingest/coingest\.conf'
# shellcheck disable=SC2016 # a literal $MAINPID, for systemd to expand
require 'ExecReload=/bin/kill -HUP \$MAINPID'
require 'WatchdogSec=[0-9]+s?'
require 'Restart=on-failure'
require 'DynamicUser=yes'
require 'StateDirectory=coingest( .*)?'
require 'ConfigurationDirectory=coingest'
require 'TimeoutStopSec=[0-9]+s?'
require 'RestrictAddressFamilies=.*AF_INET .*'
require 'RestrictAddressFamilies=.*AF_INET6.*'
require 'RestrictAddressFamilies=.*AF_UNIX.*'
if grep -Eq '^(PrivateNetwork=yes|IPAddressDeny=any)' "$unit"; then
    echo "FAIL: the unit cuts the daemon off the network"
    fail=1
fi
if grep -Eq '^(InaccessiblePaths|TemporaryFileSystem)=.*/run' "$unit"; then
    echo "FAIL: the unit hides /run (the database socket lives in /run/mysqld)"
    fail=1
fi
# TimeoutStopSec must leave the daemon time for its own shutdown_timeout (default 30s).
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' "$unit")
if [[ -z $stop || $stop -le 30 ]]; then
    echo "FAIL: TimeoutStopSec ($stop) must exceed the default shutdown_timeout (30s)"
    fail=1
fi
[[ $fail -eq 0 ]] || exit 1
echo "ok: required directives present"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP: systemd-analyze not installed"
    exit 77
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin=${COINGESTD:-}
if [[ -z $bin || ! -x $bin ]]; then
    echo "note: COINGESTD not built ($bin); verifying with /bin/true as ExecStart"
    bin=/bin/true
fi
sed "s|/usr/sbin/coingestd|$bin|" "$unit" >"$tmp/coingestd.service"

# verify exits 0 on unknown keys and bad values too: any output at all is a failure.
if ! out=$(systemd-analyze verify "$tmp/coingestd.service" 2>&1) || [[ -n $out ]]; then
    echo "FAIL: systemd-analyze verify:"
    echo "$out"
    exit 1
fi
echo "ok: systemd-analyze verify"

if ! systemd-analyze security --offline=true "$tmp/coingestd.service" >"$tmp/security.txt" 2>&1; then
    echo "note: this systemd-analyze cannot analyse offline; security check skipped"
    cat "$tmp/security.txt"
    exit 0
fi
grep 'Overall exposure' "$tmp/security.txt" || true
# --threshold is the exposure times ten: 20 means 2.0, the upper bound of "OK".
if ! systemd-analyze security --offline=true --threshold=20 "$tmp/coingestd.service" >/dev/null 2>&1; then
    echo "FAIL: exposure above 2.0:"
    grep -E '✗|Overall' "$tmp/security.txt"
    exit 1
fi
echo "ok: systemd-analyze security exposure <= 2.0"
