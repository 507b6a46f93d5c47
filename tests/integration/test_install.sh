#!/usr/bin/env bash
# shellcheck disable=SC2015 # ok and fail always succeed: "test && ok || fail" is an if-else
# What `cmake --install` and `cpack -G DEB` write lines up (issue 18, finding 3): never on the
# real system, always under a temp dir.
#
# 1. DESTDIR=tmp cmake --install of the test build (its configured prefix, /usr/local unless
#    told otherwise): the unit's ExecStart binary, its -c file and its Documentation= file are
#    all installed, the binary's built-in default config (--help) is the unit's -c file, and
#    `systemd-analyze verify --root=` accepts the installed unit without a word.
#    `cmake --install --prefix OTHER` is refused (the prefix is baked in at configure time).
# 2. A build configured with -DCMAKE_INSTALL_PREFIX=/usr and `cpack -G DEB`: the package holds
#    /usr/sbin/coingestd, /usr/lib/systemd/system/coingestd.service, /etc/coingest/coingest.conf
#    as a conffile, the docs; its postinst creates the system user and /var/lib/coingest; its
#    Depends come from dpkg-shlibdeps; the unpacked package passes systemd-analyze verify.
# Exits 77 (skipped, saying why) without systemd-analyze or dpkg-dev; scripts/test installs both.
# ctest-labels: slow
set -u
: "${COINGESTD:?run through ctest}" "${COINGEST_SOURCE_DIR:?run through ctest}" "${COINGEST_BUILD_DIR:?run through ctest}"

failed=0
passed=0
ok() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "FAIL: $1"; }

for tool in systemd-analyze dpkg-deb dpkg-shlibdeps cpack; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: $tool not installed (apt-get install systemd dpkg-dev cmake; scripts/test installs them)"
    exit 77
  fi
done
tmp=$(mktemp -d /tmp/coingest-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# A root for systemd-analyze verify --root: the installed tree plus what any unit refers to.
add_systemd_base() { # root
  mkdir -p "$1/bin" "$1/usr/lib/systemd/system"
  cp /bin/kill "$1/bin/kill"
  cp /lib/systemd/system/*.target /lib/systemd/system/*.slice "$1/usr/lib/systemd/system/" 2>/dev/null
}

key() { sed -n "s/^$2=//p" "$1" | head -n 1; } # unit, key

check_tree() { # root, unit path inside root, what
  local root=$1 what=$3
  local unit=$root$2
  [ -f "$unit" ] && ok "$what: the unit is installed at $2" || { fail "$what: no unit at $2"; return; }
  local exec bin conf doc
  exec=$(key "$unit" ExecStart)
  bin=${exec%% *}
  conf=$(printf '%s' "$exec" | sed -n 's/.* -c \([^ ]*\).*/\1/p')
  doc=$(key "$unit" Documentation | sed 's|^file:||')
  [ -x "$root$bin" ] && ok "$what: ExecStart $bin is installed" || fail "$what: ExecStart $bin is not in the tree"
  [ -f "$root$conf" ] && ok "$what: -c $conf is installed" || fail "$what: -c $conf is not in the tree"
  [ -f "$root$doc" ] && ok "$what: Documentation $doc is installed" || fail "$what: Documentation $doc is not in the tree"
  if "$root$bin" --help 2>/dev/null | grep -qF "(default $conf)"; then
    ok "$what: the binary's default config is the unit's"
  else
    fail "$what: --help default: $("$root$bin" --help | grep default)"
  fi
  add_systemd_base "$root"
  local out
  if out=$(systemd-analyze verify --root="$root" "$unit" 2>&1) && [ -z "$out" ]; then
    ok "$what: systemd-analyze verify accepts the installed unit"
  else
    fail "$what: systemd-analyze verify: $out"
  fi
}

# --- 1. cmake --install of the test build --------------------------------------------------
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$COINGEST_BUILD_DIR/CMakeCache.txt")
unitdir=$(sed -n 's/^COINGEST_SYSTEMD_UNITDIR:[A-Z]*=//p' "$COINGEST_BUILD_DIR/CMakeCache.txt")
unitdir=${unitdir:-$prefix/lib/systemd/system}
if DESTDIR=$tmp/dest cmake --install "$COINGEST_BUILD_DIR" >"$tmp/install.log" 2>&1; then
  ok "cmake --install with DESTDIR (prefix $prefix)"
  check_tree "$tmp/dest" "$unitdir/coingestd.service" "cmake --install"
else
  fail "cmake --install: $(tail -n 5 "$tmp/install.log")"
fi
if DESTDIR=$tmp/other cmake --install "$COINGEST_BUILD_DIR" --prefix /opt/elsewhere >"$tmp/other.log" 2>&1; then
  fail "cmake --install --prefix OTHER is accepted, though the binary and unit name $prefix"
else
  grep -q "reconfigure" "$tmp/other.log" && ok "cmake --install --prefix OTHER is refused with a reason" ||
    fail "refused without saying why: $(tail -n 3 "$tmp/other.log")"
fi

# --- 2. the Debian package ------------------------------------------------------------------
if ! cmake -S "$COINGEST_SOURCE_DIR" -B "$tmp/build" -DCMAKE_INSTALL_PREFIX=/usr -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$tmp/deb.log" 2>&1 ||
  ! cmake --build "$tmp/build" -j 2 --target coingestd >>"$tmp/deb.log" 2>&1 ||
  ! (cd "$tmp/build" && cpack -G DEB) >>"$tmp/deb.log" 2>&1; then
  fail "cpack -G DEB: $(tail -n 20 "$tmp/deb.log")"
else
  deb=$(ls "$tmp"/build/coingest_*.deb)
  ok "cpack -G DEB built ${deb##*/}"
  files=$(dpkg-deb -c "$deb" | awk '{print $6}')
  for f in ./usr/sbin/coingestd ./usr/lib/systemd/system/coingestd.service ./etc/coingest/coingest.conf \
    ./usr/share/doc/coingest/operations.md ./usr/share/coingest/sql/001_initial.sql; do
    printf '%s\n' "$files" | grep -qx "$f" && ok "the package holds $f" || fail "the package lacks $f"
  done
  mkdir -p "$tmp/ctrl"
  dpkg-deb -e "$deb" "$tmp/ctrl"
  grep -qx /etc/coingest/coingest.conf "$tmp/ctrl/conffiles" && ok "the config is a conffile" ||
    fail "conffiles: $(cat "$tmp/ctrl/conffiles" 2>/dev/null)"
  grep -q 'adduser --system' "$tmp/ctrl/postinst" && grep -q 'install -d -o coingest .*/var/lib/coingest' "$tmp/ctrl/postinst" &&
    ok "postinst creates the system user and the state directory" || fail "postinst: $(cat "$tmp/ctrl/postinst")"
  if command -v shellcheck >/dev/null 2>&1; then
    shellcheck -s sh "$tmp/ctrl/postinst" "$tmp/ctrl/prerm" "$tmp/ctrl/postrm" && ok "maintainer scripts pass shellcheck" ||
      fail "shellcheck on the maintainer scripts"
  fi
  depends=$(dpkg-deb -f "$deb" Depends)
  for lib in adduser libuv1 libcurl4 libjansson4 libmariadb3 libinih1 zlib1g libssl3; do
    printf '%s' "$depends" | grep -q "$lib" && ok "Depends names $lib" || fail "Depends lacks $lib: $depends"
  done
  grep -qx 'User=coingest' "$tmp/build/coingestd.service" && ok "the unit runs as the package's user" ||
    fail "the unit has no User=coingest"
  dpkg-deb -x "$deb" "$tmp/root"
  check_tree "$tmp/root" /usr/lib/systemd/system/coingestd.service "the .deb"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
