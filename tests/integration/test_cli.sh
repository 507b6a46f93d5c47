#!/usr/bin/env bash
# The command line as users and scripts call it: --version, --help, --check-config on the
# shipped example (exit 0, secrets masked, the request budget), a typo'd key (exit 78 naming
# file, line and key), a bad value, bad usage (exit 2), and a missing file.
set -u
: "${COINGESTD:?run through ctest}" "${COINGEST_SOURCE_DIR:?run through ctest}"

failed=0
passed=0
ok() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "FAIL: $1"; }
expect_rc() { # want, got, what
  if [ "$2" -eq "$1" ]; then ok "$3 (exit $2)"; else fail "$3: exit $2, want $1"; fi
}
contains() { # haystack, needle, what
  if printf '%s' "$1" | grep -qF -- "$2"; then ok "$3"; else fail "$3: no \"$2\" in: $1"; fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

out=$("$COINGESTD" --version 2>&1); rc=$?
expect_rc 0 $rc "--version"
contains "$out" "coingestd " "--version prints the name and version"

out=$("$COINGESTD" --help 2>&1); rc=$?
expect_rc 0 $rc "--help"
for opt in --check-config --once --migrate --version; do contains "$out" "$opt" "--help lists $opt"; done

out=$("$COINGESTD" --check-config -c "$COINGEST_SOURCE_DIR/etc/coingest.conf" 2>&1); rc=$?
expect_rc 0 $rc "--check-config on etc/coingest.conf"
contains "$out" "[source.coingecko]" "the effective config is printed"
contains "$out" "budget: total requests_per_min=" "the request budget is printed"

# Secrets are masked in the dump.
cp "$COINGEST_SOURCE_DIR/etc/coingest.conf" "$tmp/secret.conf"
out=$(COINGEST_DB_PASSWORD=hunter2-secret "$COINGESTD" --check-config -c "$tmp/secret.conf" 2>&1); rc=$?
expect_rc 0 $rc "--check-config with a password from the environment"
if printf '%s' "$out" | grep -q hunter2-secret; then fail "the password is printed"; else ok "the password is masked"; fi
contains "$out" "password = ********" "the password shows as ********"

# issue 18, finding 8: an inline '#' comment, quotes around a value, a missing password.
printf '[database]\nsocket = /run/mysqld/mysqld.sock\n[job.prices]\nevery = 5m # five minutes\n' >"$tmp/hash.conf"
out=$("$COINGESTD" --check-config -c "$tmp/hash.conf" 2>&1); rc=$?
expect_rc 0 $rc "'# comment' after a value"
contains "$out" "every = 5m" "the '#' comment is not part of the value"
contains "$out" "warning: [database] password is not set" "a missing password is a warning"
printf '[database]\nuser = "reader"\npassword = "secret"\n' >"$tmp/quoted.conf"
out=$("$COINGESTD" --check-config -c "$tmp/quoted.conf" 2>&1); rc=$?
expect_rc 0 $rc "quoted values"
contains "$out" "user = reader" "the quotes are removed"
if printf '%s' "$out" | grep -q "password is not set"; then fail "warned although a password is set"; else ok "no warning with a password"; fi
# The budget prints rates to two decimals and monthly counts as whole numbers.
if printf '%s' "$out" | grep -E '^budget:' | grep -Eq '=[0-9]+\.[0-9]{3,}|month=[0-9]+\.'; then
  fail "float noise in the budget: $(printf '%s' "$out" | grep '^budget:')"
else
  ok "budget numbers are rounded"
fi

# A typo'd key: 78, file:line:key.
printf '[daemon]\nlog_level = info\n\n[job.prices]\nevry = 5m\n' >"$tmp/typo.conf"
out=$("$COINGESTD" --check-config -c "$tmp/typo.conf" 2>&1); rc=$?
expect_rc 78 $rc "a typo'd key"
contains "$out" "$tmp/typo.conf:5: [job.prices] evry" "the error names file, line, section and key"

# A bad value says what was expected.
printf '[job.prices]\nevery = 5 minutes\n' >"$tmp/bad.conf"
out=$("$COINGESTD" --check-config -c "$tmp/bad.conf" 2>&1); rc=$?
expect_rc 78 $rc "a bad duration"
contains "$out" "$tmp/bad.conf:2: [job.prices] every: \"5 minutes\" is not a duration" "the error says what is wrong"

# The daemon itself refuses the bad file the same way.
out=$("$COINGESTD" -c "$tmp/typo.conf" 2>&1); rc=$?
expect_rc 78 $rc "the daemon refuses a bad config at start"

out=$("$COINGESTD" --check-config -c "$tmp/does-not-exist.conf" 2>&1); rc=$?
expect_rc 78 $rc "a missing config file"
contains "$out" "does-not-exist.conf" "the missing file is named"

out=$("$COINGESTD" --once nosuchjob -c "$COINGEST_SOURCE_DIR/etc/coingest.conf" 2>&1); rc=$?
expect_rc 2 $rc "--once with an unknown job"
contains "$out" "nosuchjob" "the unknown job is named"

out=$("$COINGESTD" --bogus 2>&1); rc=$?
expect_rc 2 $rc "an unknown option"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
