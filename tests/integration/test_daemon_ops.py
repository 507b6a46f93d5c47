"""The running daemon as an operator sees it: systemd notify, reload, metrics, health, stop.

A real coingestd runs against the fake API and the private MariaDB, with NOTIFY_SOCKET and
WATCHDOG_USEC pointing at a datagram socket this test reads:

- READY=1 after the database is reached, WATCHDOG=1 keep-alives, RELOADING=1 then READY=1
  around each SIGHUP, STOPPING=1 on SIGTERM, in that order;
- SIGHUP with a changed interval takes effect without a restart (prices rows keep coming at
  the new pace); SIGHUP with a broken file keeps the old config and logs file:line;
- /metrics passes `promtool check metrics` and its rows counter matches the database;
  /healthz answers 200 with a JSON body;
- 200 SIGHUPs under load: the daemon keeps running (the ASan pass turns a leak into a
  failure at exit);
- SIGTERM: exit 0 within shutdown_timeout.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-ops.")
    api = h.FakeAPI(work, "--universe", "200")
    db = h.Database(f"ops_{os.getpid()}")
    nsock_path = os.path.join(work, "notify.sock")
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(nsock_path)
    nsock.settimeout(0.2)
    port = h.free_port()
    conf = os.path.join(work, "ops.conf")
    jobs_slow = "[job.assets]\nevery = 24h\n[job.prices]\nevery = 1h\n[job.market_caps]\nevery = 24h\n"
    jobs_fast = ("[job.assets]\nevery = 24h\n[job.prices]\nevery = 2s\nrun_at_start = false\n"
                 "[job.market_caps]\nevery = 24h\n")

    def write(jobs):
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool"), jobs=jobs)
        text = open(conf).read().replace("metrics_listen =\n",
                                         f"metrics_listen = 127.0.0.1:{port}\n")
        open(conf, "w").write(text)

    messages = []
    lock = threading.Lock()
    stop = threading.Event()

    # A unix datagram queue is short (net.unix.max_dgram_qlen): read it all the time, as
    # systemd does, so no notification is dropped.
    def reader():
        while not stop.is_set():
            try:
                m = nsock.recv(4096).decode()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            with lock:
                messages.append(m)
    t = threading.Thread(target=reader, daemon=True)
    t.start()

    def drain():
        time.sleep(0.3)

    write(jobs_slow)
    stderr_path = os.path.join(work, "daemon.log")
    d = h.start_daemon(conf, env={"NOTIFY_SOCKET": nsock_path, "WATCHDOG_USEC": "1000000"},
                       stderr_path=stderr_path)
    try:
        def ready():
            drain()
            return any("READY=1" in m for m in messages)
        h.wait_for(ready, 60, what="READY=1")
        check(True, "READY=1 sent")
        # The jobs run at start: wait for the three.
        h.wait_for(lambda: db.count("job_runs") >= 3, 120, what="first runs")
        check(db.count("prices") == 200, "prices written at start")

        def get(path):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.status, r.read().decode()

        status, body = get("/healthz")
        check.eq(status, 200, "/healthz answers 200 while the database is up")
        check(json.loads(body).get("status") == "ok", "/healthz body is JSON saying ok")
        # Let the sink go idle so the counter and the table agree.
        time.sleep(1.5)
        status, metrics = get("/metrics")
        check.eq(status, 200, "/metrics answers 200")
        promtool = shutil.which("promtool")
        if promtool:
            p = subprocess.run([promtool, "check", "metrics"], input=metrics, text=True,
                               capture_output=True)
            check(p.returncode == 0, f"promtool check metrics passes {p.stdout}{p.stderr}")
        written = 0.0
        for line in metrics.splitlines():
            if line.startswith('coingest_rows_written_total{table="prices"}'):
                written = float(line.split()[-1])
        check.eq(int(written), db.count("prices"), "rows_written_total{prices} matches the table")

        # SIGUSR1: a one-line stats snapshot in the log.
        d.send_signal(signal.SIGUSR1)
        h.wait_for(lambda: "msg=stats" in open(stderr_path).read(), 10, what="stats line")
        stats = [l for l in open(stderr_path).read().splitlines() if "msg=stats" in l]
        check(len(stats) == 1 and "rows_committed=" in stats[0] and "db_up=true" in stats[0],
              "SIGUSR1 logs one stats line")

        # SIGHUP with a broken file: old config stays, the log names the line.
        good = open(conf).read()
        open(conf, "w").write(good.replace("[job.prices]\nevery = 1h", "[job.prices]\nevery = 5 minutes"))
        d.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        log = open(stderr_path).read()
        check("5 minutes" in log and "ops.conf:" in log, "broken reload is logged with file:line")
        check(d.poll() is None, "daemon survives a broken reload")

        # SIGHUP with prices every 2s: rows keep coming without a restart.
        before = db.count("prices")
        api.control("POST", "tick", {})
        write(jobs_fast)
        d.send_signal(signal.SIGHUP)

        def more_prices():
            api.control("POST", "tick", {})
            return db.count("prices") >= before + 400
        h.wait_for(more_prices, 60, step=1.0, what="prices at the new interval")
        check(True, "a changed interval applies without restart")

        # 200 SIGHUPs under load.
        for _ in range(200):
            d.send_signal(signal.SIGHUP)
            time.sleep(0.01)
        time.sleep(2)
        check(d.poll() is None, "daemon alive after 200 SIGHUPs")
        status, _ = get("/healthz")
        check.eq(status, 200, "healthy after 200 SIGHUPs")

        d.send_signal(signal.SIGTERM)
        t0 = time.time()
        rc = d.wait(60)
        check.eq(rc, 0, "SIGTERM: exit 0")
        check(time.time() - t0 < 25, "SIGTERM: stopped within shutdown_timeout")
        drain()
        seq = [m.split("\n")[0].split("=")[0] for m in messages]
        order = []
        for m in messages:
            for key in ("READY=1", "RELOADING=1", "WATCHDOG=1", "STOPPING=1"):
                if key in m:
                    order.append(key)
        check("WATCHDOG=1" in order, "WATCHDOG=1 keep-alives sent")

        # --once: a reload that changes a schedule does not crash it (there is no schedule),
        # and a stop signal that cuts the list short makes it exit non-zero.
        api.control("POST", "faults", {"match": "/coins/markets", "kind": "delay", "delay": 3,
                                       "count": 5})
        d3 = h.start_daemon(conf, "--once", "market_caps,prices",
                            stderr_path=os.path.join(work, "once.log"))
        time.sleep(1.0)
        write(jobs_fast)
        d3.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        check(d3.poll() is None, "--once survives a SIGHUP that changes a schedule")
        d3.send_signal(signal.SIGTERM)
        rc3 = d3.wait(30)
        check(rc3 > 0, f"--once cut short by SIGTERM exits non-zero (rc={rc3})")
        api.control("DELETE", "faults")

        # A SIGHUP during startup is not fatal: signals are blocked until the loop handles them.
        write(jobs_slow)
        d2 = h.start_daemon(conf, stderr_path=os.path.join(work, "early.log"))

        # The first thing main() does is block the signals; before that (between exec and
        # main) the kernel's default action applies to any process. Wait until SIGHUP is
        # blocked, or already caught by the loop's handler (startup may get that far between
        # two looks), then signal while the daemon is still setting up.
        def hup_blocked():
            if d2.poll() is not None:
                raise AssertionError(f"the daemon exited early ({d2.returncode}): "
                                     + open(os.path.join(work, "early.log")).read()[-2000:])
            mask = 0
            try:
                for line in open(f"/proc/{d2.pid}/status"):
                    if line.startswith(("SigBlk:", "SigCgt:")):
                        mask |= int(line.split()[1], 16)
            except OSError:
                return False
            return mask & 1
        h.wait_for(hup_blocked, 30, step=0.001, what="SIGHUP blocked")
        for _ in range(5):
            d2.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        check(d2.poll() is None, "SIGHUPs during startup do not kill the daemon")
        d2.send_signal(signal.SIGTERM)
        check.eq(d2.wait(30), 0, "and it still stops cleanly")
        check(any("MONOTONIC_USEC=" in m for m in messages if "RELOADING=1" in m),
              "RELOADING=1 carries MONOTONIC_USEC")
        first_reload = order.index("RELOADING=1") if "RELOADING=1" in order else -1
        check(first_reload > order.index("READY=1") and "READY=1" in order[first_reload:],
              "READY, RELOADING, READY in order")
        check(bool(order) and order[-1] == "STOPPING=1", "STOPPING=1 at the end")
        check(any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in messages),
              f"STATUS= sent ({len(seq)} messages)")
    finally:
        if d.poll() is None:
            d.kill()
        stop.set()
        api.stop()
        db.drop()
        nsock.close()
    check.done()


if __name__ == "__main__":
    main()
