#!/usr/bin/env python3
"""The README's SQL, run as written (issue 18, findings 5 and 7).

- No SQL block compares stored times (UTC) with NOW(), the server's local time.
- "Running it for real": the CREATE DATABASE / CREATE USER / GRANT block runs as the server's
  administrator (names made unique for the test); with exactly those grants the daemon's user
  runs `--migrate` and `--once assets,prices,market_caps` against the fake API; the read-only
  user can read and cannot write; the pruning DELETEs run as the daemon's user.
- "Looking at the data": every query runs as the daemon's user on that data, after --once
  rollups and --once indicators (the candles query must find rows).
Needs the test server's administrator (root over the unix socket, as scripts/mariadb-private
sets it up for the user running it); exits 77 saying so when that login is refused.
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402


def blocks(text, lang):
    return re.findall(r"```%s\n(.*?)```" % lang, text, re.S)


def section(text, title):
    m = re.search(r"^## %s\n(.*?)(?=^## )" % re.escape(title), text, re.S | re.M)
    return m.group(1) if m else ""


def client(sock, user, password, db, sql):
    args = [h.shutil.which("mariadb") or "mysql", "--no-defaults", "-S", sock, "-u", user,
            "--batch", "--skip-column-names"]
    if password:
        args.append(f"-p{password}")
    if db:
        args.append(db)
    return subprocess.run(args, input=sql, capture_output=True, text=True, timeout=120)


def main():
    h.need_env()
    sock = os.environ.get("COINGEST_TEST_DB_SOCKET")
    if not sock:
        h.skip("needs the test server's unix socket (COINGEST_TEST_DB_SOCKET)")
    check = h.Check()
    readme = open(os.path.join(os.environ["COINGEST_SOURCE_DIR"], "README.md")).read()

    sql_blocks = blocks(readme, "sql")
    check(sql_blocks, "the README has SQL blocks")
    for b in sql_blocks:
        check(not re.search(r"\bNOW\(\)", b), "no SQL block compares UTC times with NOW(): " +
              b.strip().splitlines()[0])

    admin = None
    for user in ("root", os.environ.get("USER") or ""):
        if user and client(sock, user, None, "", "SELECT 1").returncode == 0:
            admin = user
            break
    if not admin:
        h.skip("the test server refuses root over its socket; cannot run the README's GRANTs")

    real = section(readme, "Running it for real")
    setup = [b for b in blocks(real, "sql") if "GRANT" in b]
    check(len(setup) == 1, "one block of GRANTs in \"Running it for real\"")
    prune = [b for b in blocks(real, "sql") if "DELETE FROM" in b]
    check(len(prune) == 1, "one block of pruning statements")
    if check.failed:
        check.done()

    pid = os.getpid()
    dbname, user, ro = f"readme_{pid}", f"readme_{pid}", f"readme_ro_{pid}"
    text = setup[0]
    text = text.replace("'coingest_ro'@", f"'{ro}'@").replace("'coingest'@", f"'{user}'@")
    text = re.sub(r"\bcoingest\.\*", f"{dbname}.*", text)
    text = re.sub(r"CREATE DATABASE coingest\b", f"CREATE DATABASE {dbname}", text)
    check("coingest" not in re.sub(r"--.*", "", text).replace("utf8mb4", ""),
          "every name in the GRANT block was made unique")
    pw = re.search(rf"'{user}'@'localhost' IDENTIFIED BY '([^']*)'", text).group(1)
    ro_pw = re.search(rf"'{ro}'@'%' IDENTIFIED BY '([^']*)'", text).group(1)
    drop = (f"DROP DATABASE IF EXISTS {dbname}; DROP USER IF EXISTS '{user}'@'localhost'; "
            f"DROP USER IF EXISTS '{ro}'@'%';")
    client(sock, admin, None, "", drop)
    work = h.tempdir("coingest-readme.")
    api = h.FakeAPI(work, "--fixtures", os.environ["COINGEST_FIXTURES"])
    try:
        r = client(sock, admin, None, "", text)
        check.eq((r.returncode, r.stderr.strip()), (0, ""), "the README's GRANT block runs")

        class Db:  # what harness.write_config reads
            name, socket, port, password = dbname, sock, None, pw
        Db.user = user
        conf = os.path.join(work, "readme.conf")
        h.write_config(conf, Db, api.base_url, os.path.join(work, "spool"),
                       extra="vs_currencies = usd")
        rc, out, err = h.run_daemon(conf, "--migrate", timeout=120)
        check.eq(rc, 0, "--migrate with exactly the README's grants" + (": " + err[-800:] if rc else ""))
        rc, out, err = h.run_daemon(conf, "--once", "assets,prices,market_caps", timeout=300)
        check.eq(rc, 0, "--once assets,prices,market_caps with those grants" +
                 (": " + err[-800:] if rc else ""))
        n = client(sock, user, pw, dbname, "SELECT COUNT(*) FROM prices").stdout.strip()
        check(n.isdigit() and int(n) > 0, f"prices were written ({n})")

        # The analytics tables the README queries: rollups first (its statements commit before
        # --once exits), then the indicators read those candles.
        for job in ("rollups", "indicators"):
            rc, out, err = h.run_daemon(conf, "--once", job, timeout=120)
            check.eq(rc, 0, f"--once {job} with those grants" + (": " + err[-800:] if rc else ""))
        n = client(sock, user, pw, dbname,
                   "SELECT COUNT(*) FROM price_rollups WHERE bucket = '1d'").stdout.strip()
        check(n.isdigit() and int(n) > 0, f"daily candles were written ({n})")

        # One recorded day gives no RSI and no movers (their windows are not full): a later day
        # written by hand shows that the movers and RSI queries find the latest day's rows.
        r = client(sock, user, pw, dbname,
                   "INSERT INTO indicators_daily (source, asset_id, vs_currency, day, close,"
                   " return_days, rsi_14) VALUES ('coingecko', 'readme-hot', 'usd', '2099-01-02',"
                   " 1, 5, 75), ('coingecko', 'readme-cold', 'usd', '2099-01-02', 1, 5, 25);"
                   "INSERT INTO movers_daily (day, vs_currency, source, direction, `rank`,"
                   " asset_id, return_nd) VALUES ('2099-01-02', 'usd', 'coingecko', 'top', 1,"
                   " 'readme-up', 0.5), ('2099-01-02', 'usd', 'coingecko', 'bottom', 1,"
                   " 'readme-down', -0.5)")
        check.eq((r.returncode, r.stderr.strip()), (0, ""), "a later day of indicators written")
        for b in blocks(section(readme, "Looking at the data"), "sql"):
            r = client(sock, user, pw, dbname, b)
            check.eq((r.returncode, r.stderr.strip()), (0, ""), "\"Looking at the data\" query runs")
            for q in re.split(r";\s*\n", b):  # the answers of each query on its own
                out = client(sock, user, pw, dbname, q).stdout.strip().splitlines()
                if "FROM price_rollups" in q:
                    check(out, "the daily candles query finds bitcoin's candles")
                if "FROM movers_daily" in q:
                    got = [ln.split("\t")[3] for ln in out]
                    check.eq(got, ["readme-up", "readme-down"], "the movers query: top, bottom")
                if "rsi_14 > 70" in q:
                    got = [ln.split("\t")[0] for ln in out]
                    check.eq(got, ["readme-hot"], "the RSI query finds only the coin above 70")

        r = client(sock, ro, ro_pw, dbname, "SELECT COUNT(*) FROM assets")
        check(r.returncode == 0 and r.stdout.strip() != "0", "the read-only user reads")
        r = client(sock, ro, ro_pw, dbname, "DELETE FROM assets")
        check(r.returncode != 0 and "denied" in r.stderr, "the read-only user cannot write")

        r = client(sock, user, pw, dbname, prune[0])
        check.eq((r.returncode, r.stderr.strip()), (0, ""), "the pruning statements run")
        # The recorded rows are from 2025: a 90-day cut removes them.
        left = client(sock, user, pw, dbname, "SELECT COUNT(*) FROM prices").stdout.strip()
        check(left == "0", f"pruning removed the old prices ({left} left)")
    finally:
        api.stop()
        client(sock, admin, None, "", drop)
    check.done()


if __name__ == "__main__":
    main()
