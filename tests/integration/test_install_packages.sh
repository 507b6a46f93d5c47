#!/usr/bin/env bash
# shellcheck disable=SC2015 # ok and fail always succeed: "test && ok || fail" is an if-else
# scripts/install-packages (used by scripts/quickstart and scripts/test; issue 18, finding 9):
# installing mariadb-server must not leave a system MariaDB running or enabled. With stub
# dpkg-query, apt-get, sudo and systemctl first on PATH (nothing is installed), it checks that
# a policy-rc.d refusing service starts (exit 101) is in place while apt-get installs, that it
# is removed afterwards (and one the machine had is left alone), that mariadb.service is
# disabled and stopped on a systemd machine, and that the output says so.
set -u
: "${COINGEST_SOURCE_DIR:?run through ctest}"
ip=$COINGEST_SOURCE_DIR/scripts/install-packages

failed=0
passed=0
ok() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "FAIL: $1"; }

tmp=$(mktemp -d /tmp/coingest-instpkg.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/systemd"
cat >"$tmp/bin/dpkg-query" <<'STUB'
#!/bin/sh
# Everything is installed except mariadb-server.
for a; do :; done
[ "$a" = mariadb-server ] && { echo "unknown ok not-installed"; exit 0; }
echo "install ok installed"
STUB
cat >"$tmp/bin/apt-get" <<'STUB'
#!/bin/sh
echo "apt-get $*" >>"$LOG"
case "$1" in update) exit 0 ;; esac
if [ -x "$POLICY" ]; then "$POLICY" mariadb start; echo "policy-rc.d says $?" >>"$LOG"; else echo "no policy-rc.d" >>"$LOG"; fi
exit 0
STUB
# shellcheck disable=SC2016 # literal $@, $* and $LOG for the stubs
{ printf '#!/bin/sh\nexec "$@"\n' >"$tmp/bin/sudo"; printf '#!/bin/sh\necho "systemctl $*" >>"$LOG"\n' >"$tmp/bin/systemctl"; }
chmod +x "$tmp/bin/"*
export LOG=$tmp/log POLICY=$tmp/policy-rc.d PATH="$tmp/bin:$PATH"
export INSTALL_PACKAGES_POLICY_RC_D=$POLICY INSTALL_PACKAGES_SYSTEMD_DIR=$tmp/systemd

out=$("$ip" tester cmake mariadb-server 2>&1); rc=$?
[ $rc = 0 ] && ok "exit 0" || fail "exit $rc: $out"
grep -q 'apt-get install .*mariadb-server' "$LOG" && ! grep -q 'install .*cmake' "$LOG" &&
  ok "installs only what is missing" || fail "apt-get calls: $(cat "$LOG")"
grep -q 'policy-rc.d says 101' "$LOG" && ok "service starts are refused while apt-get runs" ||
  fail "no refusing policy-rc.d during the install: $(cat "$LOG")"
[ ! -e "$POLICY" ] && ok "its policy-rc.d is removed afterwards" || fail "policy-rc.d left behind"
grep -q 'systemctl disable --now --quiet mariadb.service' "$LOG" && ok "mariadb.service is disabled and stopped" ||
  fail "mariadb.service not disabled: $(cat "$LOG")"
printf '%s' "$out" | grep -q 'stopped and disabled' && ok "and the output says so" || fail "output: $out"

# A policy-rc.d of the machine's own stays as it was.
printf '#!/bin/sh\nexit 0\n' >"$POLICY"
chmod +x "$POLICY"
: >"$LOG"
"$ip" tester mariadb-server >/dev/null 2>&1
[ "$(cat "$POLICY")" = "$(printf '#!/bin/sh\nexit 0')" ] && ok "an existing policy-rc.d is left alone" || fail "existing policy-rc.d changed"

# Nothing missing: no apt-get at all.
: >"$LOG"
"$ip" tester cmake >/dev/null 2>&1
[ ! -s "$LOG" ] && ok "nothing to install: apt-get is not run" || fail "apt-get ran: $(cat "$LOG")"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
