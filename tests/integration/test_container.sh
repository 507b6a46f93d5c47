#!/usr/bin/env bash
# test_container: what can be checked of the container without Docker.
#
# 1. shellcheck on the entrypoint and on these test scripts.
# 2. The entrypoint's behaviour, with a stub coingestd on PATH: migrations, then exec of the
#    daemon with -c "$COINGEST_CONFIG" and the arguments; a failed migration stops there;
#    COINGEST_SKIP_MIGRATIONS; any other command is exec'd as is; a missing config exits 78.
# 3. Every shared library the built coingestd needs ($COINGESTD, via ldd) comes from a Debian
#    package (dpkg -S) that the runtime stage of the Dockerfile installs: the libraries the
#    binary links directly must come from a package named on the runtime apt-get install line
#    (or from the base image's essential set, e.g. libc6); the indirect ones from those
#    packages' dependency closure.
# 4. The Dockerfile's shape: two stages, a slim runtime, a non-root USER, a HEALTHCHECK on
#    /healthz, an exec-form ENTRYPOINT.
# 5. docker-compose.yml parses as YAML, has mariadb (with healthcheck.sh) and coingest started
#    on condition service_healthy, and metabase only under the "dashboards" profile.
# 6. docker/coingest.conf passes `coingestd --check-config` (where the binary has it).
# Exits 77 (skipped) when shellcheck is not installed.
set -euo pipefail

src=${COINGEST_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
cd "$src"
fail=0  # any check failed
sfail=0 # a check of the current section failed
bad() {
    echo "FAIL: $*"
    fail=1
    sfail=1
}

if ! command -v shellcheck >/dev/null 2>&1; then
    echo "SKIP: shellcheck not installed"
    exit 77
fi

# ---- 1. shellcheck ----
scripts=(docker/entrypoint.sh tests/integration/test_container.sh
    tests/integration/test_systemd_unit.sh tests/integration/test_install.sh
    tests/integration/test_quickstart.sh tests/integration/test_install_packages.sh
    tests/integration/test_mariadb_private.sh scripts/quickstart scripts/install-packages)
if shellcheck "${scripts[@]}"; then
    echo "ok: shellcheck ${scripts[*]}"
else
    bad "shellcheck"
fi

# ---- 2. the entrypoint with a stub daemon ----
sfail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
cat >"$tmp/bin/coingestd" <<'STUB'
#!/bin/sh
echo "coingestd $*" >>"$STUB_LOG"
if [ "$1" = --migrate ] && [ "${STUB_MIGRATE_FAILS:-0}" = 1 ]; then exit 3; fi
exit 0
STUB
chmod +x "$tmp/bin/coingestd"
echo "[daemon]" >"$tmp/c.conf"

entry() { # runs the entrypoint with the stub; prints its log
    : >"$tmp/log"
    local rc=0
    env PATH="$tmp/bin:$PATH" STUB_LOG="$tmp/log" COINGEST_CONFIG="$tmp/c.conf" "$@" \
        sh docker/entrypoint.sh "${ENTRY_ARGS[@]}" >/dev/null 2>&1 || rc=$?
    echo "rc=$rc"
    cat "$tmp/log"
}
expect_entry() { # expected output, env assignments...
    local want=$1
    shift
    local got
    got=$(entry "$@")
    if [[ $got != "$want" ]]; then
        bad "entrypoint ${ENTRY_ARGS[*]} ($*): expected"
        printf '%s\n--- got:\n%s\n' "$want" "$got"
    fi
}
ENTRY_ARGS=()
expect_entry "rc=0
coingestd --migrate -c $tmp/c.conf
coingestd -c $tmp/c.conf"
ENTRY_ARGS=(--once prices)
expect_entry "rc=0
coingestd --migrate -c $tmp/c.conf
coingestd -c $tmp/c.conf --once prices"
expect_entry "rc=0
coingestd -c $tmp/c.conf --once prices" COINGEST_SKIP_MIGRATIONS=1
expect_entry "rc=3
coingestd --migrate -c $tmp/c.conf" STUB_MIGRATE_FAILS=1
ENTRY_ARGS=(coingestd --version)
expect_entry "rc=0
coingestd --version"
ENTRY_ARGS=()
expect_entry "rc=78" COINGEST_CONFIG="$tmp/nonexistent.conf"
[[ $sfail -eq 0 ]] && echo "ok: entrypoint behaviour"

# ---- 3. shared libraries vs the runtime stage's packages ----
# The runtime stage is the last FROM; its packages are the words after `apt-get install`
# up to the next `&&`, options excluded.
runtime_pkgs=$(awk '
    /^FROM /        { stage++ ; text[stage] = "" }
    { line = $0; sub(/\\$/, "", line); text[stage] = text[stage] " " line }
    END {
        s = text[stage]
        i = index(s, "apt-get install")
        if (!i) exit
        s = substr(s, i + length("apt-get install"))
        j = index(s, "&&"); if (j) s = substr(s, 1, j - 1)
        n = split(s, w, /[ \t]+/)
        for (k = 1; k <= n; k++) if (w[k] != "" && w[k] !~ /^-/) print w[k]
    }' Dockerfile)
if [[ -z $runtime_pkgs ]]; then
    bad "no apt-get install line found in the Dockerfile's runtime stage"
fi
mapfile -t runtime_arr <<<"$runtime_pkgs"
echo "runtime packages: ${runtime_arr[*]}"

bin=${COINGESTD:-}
if [[ -z $bin ]]; then
    echo "note: COINGESTD not set; shared library check skipped"
elif [[ ! -x $bin ]]; then
    bad "COINGESTD=$bin is not an executable"
elif ! command -v dpkg >/dev/null || ! command -v python3 >/dev/null; then
    echo "note: dpkg or python3 missing; shared library check skipped"
else
    # Which package ships a file: dpkg knows the path it installed, which on a merged-/usr
    # system may be the /lib or the /usr/lib spelling, and the soname link or its target.
    pkg_of() {
        local f=$1 cand p
        for cand in "$f" "${f#/usr}" "/usr$f" "$(readlink -f "$f")" "$(readlink -f "$f" | sed 's|^/usr||')"; do
            p=$(dpkg -S "$cand" 2>/dev/null | head -n1 | cut -d: -f1) || true
            if [[ -n $p ]]; then
                echo "$p"
                return 0
            fi
        done
        return 1
    }
    direct=$(objdump -p "$bin" 2>/dev/null | awk '/NEEDED/ { print $2 }' || true)
    # ldd: "libfoo.so.1 => /path/libfoo.so.1 (0x...)" and the loader line "/lib64/ld-... (0x...)"
    ldd "$bin" | awk '/=>/ { print $1, $3; next } /^\t\// { print $1, $1 }' >"$tmp/libs"
    : >"$tmp/lib_pkgs"
    while read -r soname path; do
        case $soname in
        libasan.so* | libubsan.so* | libtsan.so* | liblsan.so*)
            echo "note: $soname is a sanitizer runtime (this is a sanitizer build); not checked"
            continue
            ;;
        esac
        if [[ $path == "not" || ! -e $path ]]; then
            bad "ldd cannot resolve $soname"
            continue
        fi
        if ! p=$(pkg_of "$path"); then
            bad "$soname ($path) belongs to no Debian package"
            continue
        fi
        kind=indirect
        if grep -qx "$soname" <<<"$direct"; then kind=direct; fi
        echo "$soname $p $kind" >>"$tmp/lib_pkgs"
    done <"$tmp/libs"

    # The dependency closure of the runtime packages, over what dpkg knows of installed
    # packages (the runtime libraries are installed here as dependencies of the -dev ones),
    # plus the essential/required packages every Debian image has.
    dpkg-query -W -f='${Package}\t${Essential}\t${Priority}\t${Depends}, ${Pre-Depends}\t${Provides}\n' \
        >"$tmp/dpkg"
    if ! python3 - "$tmp/dpkg" "$tmp/lib_pkgs" "${runtime_arr[@]}" <<'PY'; then
import re, sys
status, libfile, listed = sys.argv[1], sys.argv[2], sys.argv[3:]
deps, base, provides = {}, set(), {}
for line in open(status):
    name, essential, prio, dep, prov = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
    alts = []
    for group in dep.split(","):
        names = [re.sub(r"[\s(].*", "", a.strip()).split(":")[0] for a in group.split("|")]
        names = [n for n in names if n]
        if names:
            alts.append(names)
    deps[name] = alts
    if essential == "yes" or prio == "required":
        base.add(name)
    for p in prov.split(","):
        p = re.sub(r"[\s(].*", "", p.strip())
        if p:
            provides.setdefault(p, []).append(name)

def closure(roots):
    seen, todo = set(), list(roots)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for alts in deps.get(n, []):
            # An alternative that is installed here stands for the group.
            real = [a for a in alts if a in deps] or [p for a in alts for p in provides.get(a, [])]
            todo.extend(real[:1])
    return seen

listed_set = set(listed)
missing = [p for p in listed if p not in deps]
if missing:
    print("note: not installed here, so their dependencies are not followed: " + " ".join(missing))
base_all = closure(base)
runtime_all = closure(listed_set) | base_all
bad = 0
for line in open(libfile):
    soname, pkg, kind = line.split()
    if kind == "direct":
        ok = pkg in listed_set or pkg in base_all
        where = "listed" if pkg in listed_set else "base image"
    else:
        ok = pkg in runtime_all
        where = "dependency"
    if ok:
        print(f"  {soname:28} {pkg:24} {kind:8} ({where})")
    else:
        print(f"FAIL: {soname} ({kind}) comes from package {pkg}, which the runtime stage "
              f"does not install" + (" (name it on the apt-get install line)" if kind == "direct" else ""))
        bad = 1
sys.exit(bad)
PY
        bad "shared libraries not covered by the runtime stage"
    else
        echo "ok: every shared library of $bin is installed by the runtime stage"
    fi
fi

# ---- 4. Dockerfile shape ----
sfail=0
froms=$(grep -c '^FROM ' Dockerfile)
[[ $froms -ge 2 ]] || bad "Dockerfile is not multi-stage ($froms FROM lines)"
grep -Eq '^FROM debian:[^ ]*-slim|^FROM debian:\$\{[A-Z_]+\}-slim' Dockerfile ||
    bad "the runtime stage is not debian slim"
user=$(awk '/^USER /{u=$2} END{print u}' Dockerfile)
if [[ -z $user || $user == root || $user == 0 || $user == 0:* || $user == root:* ]]; then
    bad "Dockerfile runs as root (USER '$user')"
fi
healthcheck=$(sed -n '/^HEALTHCHECK/,/[^\\]$/p' Dockerfile)
if ! grep -q 'healthz' <<<"$healthcheck" && ! grep -Eq 'COINGEST_HEALTHCHECK_URL=[^ ]*/healthz' Dockerfile; then
    bad "no HEALTHCHECK on /healthz"
fi
grep -Eq '^ENTRYPOINT \[' Dockerfile || bad "ENTRYPOINT is not in exec form"
grep -q 'docker/entrypoint.sh' Dockerfile || bad "the Dockerfile does not install docker/entrypoint.sh"
grep -q 'docker/coingest.conf' Dockerfile || bad "the Dockerfile does not install docker/coingest.conf"
[[ $sfail -eq 0 ]] && echo "ok: Dockerfile shape"

# ---- 5. docker-compose.yml ----
if ! python3 -c 'import yaml' 2>/dev/null; then
    echo "note: python3 yaml module missing (apt-get install python3-yaml); compose check skipped"
elif python3 - docker-compose.yml <<'PY'; then
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
svc = doc.get("services") or {}
errs = []
for name in ("mariadb", "coingest", "metabase"):
    if name not in svc:
        errs.append(f"no service {name}")
m = svc.get("mariadb", {})
if not str(m.get("image", "")).startswith("mariadb:11"):
    errs.append("mariadb is not MariaDB 11")
test = (m.get("healthcheck") or {}).get("test") or []
test = " ".join(test) if isinstance(test, list) else str(test)
if "healthcheck.sh" not in test or "--connect" not in test or "--innodb_initialized" not in test:
    errs.append("mariadb healthcheck is not healthcheck.sh --connect --innodb_initialized")
c = svc.get("coingest", {})
dep = c.get("depends_on") or {}
if not isinstance(dep, dict) or (dep.get("mariadb") or {}).get("condition") != "service_healthy":
    errs.append("coingest does not wait for mariadb: service_healthy")
if "dashboards" not in (svc.get("metabase", {}).get("profiles") or []):
    errs.append("metabase is not under the dashboards profile")
if "profiles" in c or "profiles" in m:
    errs.append("mariadb and coingest must start without a profile")
for e in errs:
    print("FAIL: docker-compose.yml: " + e)
sys.exit(1 if errs else 0)
PY
    echo "ok: docker-compose.yml"
else
    bad "docker-compose.yml"
fi

# ---- 6. the container's config ----
if [[ -n $bin && -x $bin ]] && "$bin" --help 2>&1 | grep -q -- '--check-config'; then
    if out=$(env -u COINGEST_DB_HOST -u COINGEST_DB_SOCKET COINGEST_DB_PASSWORD=x \
        "$bin" --check-config -c docker/coingest.conf 2>&1); then
        echo "ok: docker/coingest.conf passes --check-config"
    else
        bad "docker/coingest.conf: $out"
    fi
else
    echo "note: coingestd has no --check-config yet; docker/coingest.conf not validated"
fi

if [[ $fail -ne 0 ]]; then
    exit 1
fi
echo "all container checks passed"
