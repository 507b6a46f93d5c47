"""/healthz while the database is away (issue 12, item 9): a short outage is not unhealthy.

This test runs its own private MariaDB (scripts/mariadb-private in a temp dir) so it can stop
and start it without disturbing the other tests. The daemon writes prices every 2s.

1. health_db_grace = 30s: the database is stopped for longer than the 2s used below; /healthz
   stays 200 the whole time, saying "db":"down" with the rows waiting (pending/spool counts),
   and is 200 with "db":"up" once the database is back.
2. A SIGHUP reload sets health_db_grace = 2s (the key is read by each probe): the database is
   stopped again; /healthz is 200 at first, then 503 naming the database once the grace has
   passed, and 200 again when the database returns. Every row written meanwhile arrives.
"""
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

N = 50


def server(cmd, d, env=None):
    return h.private_server(cmd, d, env)


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-health.")
    dbdir = os.path.join(work, "db")
    env = server("start", dbdir)
    api = db = d = None
    port = h.free_port()

    def health():
        """(status, parsed body) of one probe; (None, {}) when nothing answered."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                return r.status, json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode())
        except OSError:
            return None, {}

    try:
        api = h.FakeAPI(work, "--universe", str(N))
        db = h.Database(f"health_{os.getpid()}", socket=env["COINGEST_TEST_DB_SOCKET"],
                        port=env["COINGEST_TEST_DB_PORT"])
        conf = os.path.join(work, "h.conf")
        jobs = ("[job.assets]\nevery = 24h\n[job.prices]\nevery = 2s\n"
                "[job.market_caps]\nenabled = false\n")

        def write(grace):
            h.write_config(conf, db, api.base_url, os.path.join(work, "spool"), jobs=jobs)
            text = open(conf).read().replace(
                "metrics_listen =\n",
                f"metrics_listen = 127.0.0.1:{port}\nhealth_db_grace = {grace}\n")
            open(conf, "w").write(text)

        write("30s")
        d = h.start_daemon(conf, stderr_path=os.path.join(work, "daemon.log"))
        h.wait_for(lambda: health()[1].get("db") == "up", 60, what="/healthz with the db up")
        h.wait_for(lambda: db.count("prices") > 0, 60, what="first prices")
        status, body = health()
        check.eq(status, 200, f"healthy with the database up ({body})")

        # 1. An outage shorter than the grace: 200 throughout, "db":"down", rows waiting.
        server("stop", dbdir)
        h.wait_for(lambda: health()[1].get("db") == "down", 30, step=0.1,
                   what="/healthz to notice the database is down")
        t_down = time.time()
        statuses = set()
        waiting = 0
        while time.time() - t_down < 4:  # twice the grace used in part 2
            status, body = health()
            statuses.add(status)
            waiting = max(waiting, body.get("pending_rows", 0) + body.get("spool_rows", 0))
            time.sleep(0.2)
        check.eq(statuses, {200}, "200 during an outage within health_db_grace")
        check(waiting > 0, f"the body shows the rows waiting for the database ({waiting})")
        status, body = health()
        check(body.get("db") == "down" and "db_down_s" in body and "spool_rows" in body,
              f"the body says db down with the spool counts ({body})")
        server("start", dbdir)
        h.wait_for(lambda: health()[1].get("db") == "up", 60, what="/healthz db up again")
        check.eq(health()[0], 200, "200 once the database is back")

        # 2. health_db_grace = 2s, applied by a reload: 503 once the outage is longer.
        write("2s")
        d.send_signal(signal.SIGHUP)
        time.sleep(1)
        # The outage starts, at the earliest, when the server begins to stop: the daemon counts
        # it from its first failed connection, which may come before /healthz is asked.
        t_stop = time.time()
        server("stop", dbdir)
        h.wait_for(lambda: health()[1].get("db") == "down", 30, step=0.1,
                   what="/healthz to notice the database is down again")
        status, body = health()
        check.eq(status, 200, f"still 200 right after the database went away ({body})")
        st = h.wait_for(lambda: health()[0] == 503, 20, step=0.1,
                        what="/healthz 503 after the grace")
        took = time.time() - t_stop
        check(st and took >= 1.9, f"503 only once the grace had passed ({took:.1f}s since the "
                                  "stop began)")
        status, body = health()
        check.eq(status, 503, "503 while the outage is longer than health_db_grace")
        check("database unreachable" in body.get("reason", ""), f"the 503 says why ({body})")
        check.eq(body.get("status"), "unhealthy", "status unhealthy")
        server("start", dbdir)
        h.wait_for(lambda: health()[0] == 200, 60, what="/healthz 200 after the database returns")
        check(True, "200 again once the database is back")
        h.wait_for(lambda: health()[1].get("pending_rows", 1) == 0, 60,
                   what="the waiting rows to be written")
        check.eq(health()[1].get("rows_lost"), 0, "no row lost")
        d.send_signal(signal.SIGTERM)
        check.eq(d.wait(30), 0, "the daemon stops cleanly")
        d = None
    finally:
        if d and d.poll() is None:
            d.kill()
            d.wait(10)
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
