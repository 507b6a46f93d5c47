"""The database away: no accepted row is lost.

This test runs its own private MariaDB (scripts/mariadb-private in a temp dir) so it can stop,
start and kill it without disturbing the other tests.

1. The database is down when `coingestd --once prices` starts: the job fetches, the rows go to
   the spool, the daemon waits up to shutdown_timeout and exits non-zero with the rows safe.
2. The database comes back; the next start replays the spool: every row arrives, once.
3. A daemon running its jobs on a schedule is sent SIGTERM in the middle of a large ingest:
   it exits 0 within shutdown_timeout, and every row it accepted is in MariaDB or in the spool,
   which the next start replays.
4. `kill -9` of the daemon while rows wait in the spool (database down): a restart with the
   database up delivers them.
"""
import os
import re
import signal
import sys
import time
import socket
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

N = 2000


def server(cmd, d, env=None):
    return h.private_server(cmd, d, env)


def rows_accepted(stderr, job):
    """Rows the daemon says a job handed to the sink (its 'job finished' log line)."""
    total = 0
    for line in stderr.splitlines():
        if 'msg="job finished"' in line and f"job={job}" in line:
            m = re.search(r"\brows=(\d+)", line)
            if m:
                total += int(m.group(1))
    return total


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-outage.")
    dbdir = os.path.join(work, "db")
    env = server("start", dbdir)
    api = db = None
    try:
        api = h.FakeAPI(work, "--universe", str(N))
        db = h.Database(f"outage_{os.getpid()}", socket=env["COINGEST_TEST_DB_SOCKET"],
                        port=env["COINGEST_TEST_DB_PORT"])
        spool = os.path.join(work, "spool")
        conf = os.path.join(work, "o.conf")
        h.write_config(conf, db, api.base_url, spool,
                       universe="ids = all\nvs_currencies = usd, eur")
        text = open(conf).read().replace("shutdown_timeout = 20s", "shutdown_timeout = 4s")
        open(conf, "w").write(text)
        # Schema first, so the tables exist when we count later.
        rc, _, err = h.run_daemon(conf, "--migrate")
        check.eq(rc, 0, "--migrate")

        # 1. database down at start.
        server("stop", dbdir)
        rc, out, err = h.run_daemon(conf, "--once", "prices", timeout=120)
        check(rc != 0, f"--once with the database down exits non-zero (rc={rc})")
        check("spool" in err, "it says the rows are in the spool")
        spooled = sum(os.path.getsize(os.path.join(spool, f)) for f in os.listdir(spool)) \
            if os.path.isdir(spool) else 0
        check(spooled > 0, f"the spool holds the rows ({spooled} bytes)")

        # 2. database back: the spool is replayed on the next start.
        server("start", dbdir)
        rc, out, err = h.run_daemon(conf, "--once", "assets", timeout=120)
        check.eq(rc, 0, "next start with the database up exits 0")
        check.eq(db.count("prices"), 2 * N, "every spooled price row arrived")

        # 3. SIGTERM in the middle of a large ingest (market_caps only, on its schedule).
        api.control("POST", "tick", {})
        conf3 = os.path.join(work, "o3.conf")
        open(conf3, "w").write(open(conf).read() + "[job.assets]\nenabled = false\n"
                               "[job.prices]\nenabled = false\n[job.market_caps]\nevery = 1h\n")
        log_path = os.path.join(work, "d3.log")
        # Slow pages keep the run going when the signal comes.
        api.control("POST", "faults", {"match": "/coins/markets", "kind": "delay", "delay": 0.3,
                                       "count": 100})
        d = h.start_daemon(conf3, stderr_path=log_path)
        h.wait_for(lambda: db.count("market_snapshots") > 0, 60, step=0.05,
                   what="market snapshots to start arriving")
        d.send_signal(signal.SIGTERM)
        t0 = time.time()
        rc = d.wait(60)
        check.eq(rc, 0, "SIGTERM mid-ingest: exit 0")
        check(time.time() - t0 < 4 + 5, "stopped within shutdown_timeout (plus slack)")
        # Replay whatever was spooled, then compare with what the run says it accepted.
        rc, out, err = h.run_daemon(conf, "--once", "assets", timeout=120)
        check.eq(rc, 0, "restart after SIGTERM exits 0")
        written = db.sql("SELECT rows_written, status FROM job_runs WHERE job = 'market_caps'")
        check.eq(len(written), 1, "the interrupted run left its job_runs row")
        usd = db.count("market_snapshots", "vs_currency = 'usd'")
        eur = db.count("market_snapshots", "vs_currency = 'eur'")
        glob = db.count("global_snapshots")
        # A usd page gives a snapshot and an asset row per coin, an eur page a snapshot.
        if written:
            check.eq(int(written[0][0]), 2 * usd + eur + glob,
                     f"every row accepted before SIGTERM is stored (usd={usd} eur={eur})")

        # 4. kill -9 with rows in the spool.
        server("stop", dbdir)
        api.control("POST", "tick", {})
        api.control("DELETE", "faults")
        before_spool = set(os.listdir(spool))

        def spool_bytes():
            return sum(os.path.getsize(os.path.join(spool, f)) for f in os.listdir(spool))
        base = spool_bytes()
        d = h.start_daemon(conf, "--once", "prices", stderr_path=os.path.join(work, "d4.log"))
        # All 2N rows of the run (two currencies) are about 360 kB in the spool.
        h.wait_for(lambda: spool_bytes() - base > 300000, 60, step=0.05, what="prices spooled")
        time.sleep(0.5)
        d.send_signal(signal.SIGKILL)
        d.wait(10)
        check(len(os.listdir(spool)) >= 1, f"spool files survive kill -9 ({before_spool} -> {os.listdir(spool)})")
        server("start", dbdir)
        rc, out, err = h.run_daemon(conf, "--once", "assets", timeout=120)
        check.eq(rc, 0, "restart after kill -9 exits 0")
        check.eq(db.count("prices"), 2 * 2 * N, "the rows spooled before kill -9 arrived")

        # 5. /healthz says 503 while the database is unreachable (health_db_grace = 0: at once;
        # test_health_grace.py covers the grace), 200 once it is back.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        conf5 = os.path.join(work, "o5.conf")
        open(conf5, "w").write(open(conf).read().replace(
            "metrics_listen =\n", f"metrics_listen = 127.0.0.1:{port}\nhealth_db_grace = 0\n")
            + "[job.assets]\nenabled = false\n[job.prices]\nenabled = false\n"
            "[job.market_caps]\nenabled = false\n")
        server("stop", dbdir)
        d = h.start_daemon(conf5, stderr_path=os.path.join(work, "d5.log"))

        def health():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
            except OSError:
                return None, ""
        st = h.wait_for(lambda: health()[0], 30, what="/healthz")
        status, body = health()
        check.eq(status, 503, f"/healthz is 503 while the database is down ({body})")
        check("database" in body, "the 503 body says why")
        server("start", dbdir)
        h.wait_for(lambda: health()[0] == 200, 60, what="/healthz 200 after the database returns")
        check(True, "/healthz is 200 once the database is back")
        d.send_signal(signal.SIGTERM)
        check.eq(d.wait(30), 0, "and the daemon stops cleanly")
    finally:
        if api:
            api.stop()
        try:
            if db:
                db.drop()
        except Exception:
            pass
        server("stop", dbdir)
    check.done()


if __name__ == "__main__":
    main()
