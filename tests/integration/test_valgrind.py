# ctest-labels: nosan slow
"""The real coingestd under valgrind's memcheck: no memory error, nothing leaked.


Two runs against the fake API's synthetic universe (200 coins) and a fresh database on the
test server, each under

  valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite,indirect
           --error-exitcode=99 --suppressions=tests/valgrind.supp

1. `--once assets,prices,market_caps`: exit 0, and the rows arrived (one assets, prices and
   market_snapshots row per coin, the global snapshot, three ok job_runs rows);
2. the long-running daemon with /metrics on: the three jobs at start, the prices job again
   (every 2s), a GET of /metrics and /healthz, a SIGHUP reload, then SIGTERM: exit 0.

Each must report `ERROR SUMMARY: 0 errors` and 0 bytes definitely and indirectly lost (the
still-reachable blocks of the libraries' one-time initialisation are not leaks). Skips (77)
when valgrind is missing or when the binary is built with a sanitizer (ASan/TSan runtimes
and valgrind do not mix); the `nosan` label keeps it out of the sanitizer passes anyway.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

N = 200


def sanitized(binary):
    """True when the binary carries a sanitizer runtime (dynamic or linked in)."""
    for cmd in (["ldd", binary], ["nm", "-D", binary]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if re.search(r"lib(a|t|ub|l)san|__asan_init|__tsan_init|__msan_init", out):
            return True
    return False


def valgrind_cmd(vg, log):
    supp = os.path.join(os.environ["COINGEST_SOURCE_DIR"], "tests", "valgrind.supp")
    return [vg, "--tool=memcheck", "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99",
            f"--suppressions={supp}", "--num-callers=40", "--track-origins=yes",
            f"--log-file={log}", os.environ["COINGESTD"]]


def report(check, log, what):
    """Checks the summary of one valgrind log; prints the log when it is not clean."""
    text = open(log).read() if os.path.exists(log) else ""
    errors = re.search(r"ERROR SUMMARY: ([\d,]+) errors", text)
    definite = re.search(r"definitely lost: ([\d,]+) bytes", text)
    indirect = re.search(r"indirectly lost: ([\d,]+) bytes", text)
    clean_heap = "All heap blocks were freed -- no leaks are possible" in text
    check(errors is not None, f"{what}: valgrind wrote its error summary")
    n_err = int(errors.group(1).replace(",", "")) if errors else -1
    n_def = int(definite.group(1).replace(",", "")) if definite else (0 if clean_heap else -1)
    n_ind = int(indirect.group(1).replace(",", "")) if indirect else (0 if clean_heap else -1)
    check.eq(n_err, 0, f"{what}: memory errors")
    check.eq(n_def, 0, f"{what}: bytes definitely lost")
    check.eq(n_ind, 0, f"{what}: bytes indirectly lost")
    if n_err or n_def or n_ind:
        print(f"----- {log}")
        print(text[-30000:])


def count(db, table, where="1"):
    """db.count, or 0 while the daemon has not created the schema yet."""
    try:
        return db.count(table, where)
    except RuntimeError:
        return 0


def once_run(check, vg, work, api):
    db = h.Database(f"valgrind_once_{os.getpid()}")
    try:
        conf = os.path.join(work, "once.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool-once"))
        # Everything is 10-50 times slower under memcheck.
        text = open(conf).read().replace("shutdown_timeout = 20s", "shutdown_timeout = 120s")
        open(conf, "w").write(text)
        log = os.path.join(work, "valgrind-once.log")
        p = subprocess.run(valgrind_cmd(vg, log) + ["-c", conf, "--once",
                                                    "assets,prices,market_caps"],
                           capture_output=True, text=True, timeout=600)
        print(p.stdout)
        if p.returncode != 0:
            print(p.stderr[-4000:])
        check(p.returncode != 99, "--once: valgrind found no error (exit code is not 99)")
        check.eq(p.returncode, 0, "--once under memcheck exits 0")
        check.eq(p.stdout.count("status=ok"), 3, "--once: three summary lines with status=ok")
        check.eq(db.count("assets"), N, "--once: one assets row per coin")
        check.eq(db.count("prices"), N, "--once: one prices row per coin")
        check.eq(db.count("market_snapshots"), N, "--once: one market_snapshots row per coin")
        check.eq(db.count("global_snapshots"), 1, "--once: the global snapshot")
        check.eq(db.count("job_runs", "status='ok'"), 3, "--once: three ok job_runs rows")
        report(check, log, "--once")
    finally:
        db.drop()


def daemon_run(check, vg, work, api):
    db = h.Database(f"valgrind_daemon_{os.getpid()}")
    try:
        port = h.free_port()
        conf = os.path.join(work, "daemon.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool-daemon"),
                       jobs="[job.assets]\nevery = 24h\n[job.prices]\nevery = 2s\nalign = false\n"
                            "[job.market_caps]\nevery = 24h\n")
        text = open(conf).read()
        text = text.replace("metrics_listen =\n", f"metrics_listen = 127.0.0.1:{port}\n")
        text = text.replace("shutdown_timeout = 20s", "shutdown_timeout = 120s")
        open(conf, "w").write(text)
        log = os.path.join(work, "valgrind-daemon.log")
        err = open(os.path.join(work, "daemon.log"), "w")
        p = subprocess.Popen(valgrind_cmd(vg, log) + ["-c", conf], stdout=subprocess.DEVNULL,
                             stderr=err)
        try:
            h.wait_for(lambda: count(db, "job_runs") >= 3, 300, 0.5, "the three runs at start")
            # Move the market so the next prices run writes new rows, then wait for it.
            api.control("POST", "tick", {})
            h.wait_for(lambda: count(db, "prices") >= 2 * N, 300, 0.5, "a second prices run")
            check(True, "daemon: the jobs ran at start and prices ran again")
            for path in ("/metrics", "/healthz"):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
                    check.eq(r.status, 200, f"daemon: {path} answers 200")
                    r.read()
            p.send_signal(signal.SIGHUP)
            before = db.count("job_runs")
            # A reload keeps the daemon running: one more prices run after it.
            h.wait_for(lambda: db.count("job_runs") > before, 300, 0.5, "a run after SIGHUP")
            p.send_signal(signal.SIGTERM)
            rc = p.wait(300)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            err.close()
        check(rc != 99, "daemon: valgrind found no error (exit code is not 99)")
        check.eq(rc, 0, "daemon under memcheck exits 0 on SIGTERM")
        check(db.count("prices") >= 2 * N, "daemon: prices rows of both ticks arrived")
        report(check, log, "daemon")
        if rc != 0:
            print(open(os.path.join(work, "daemon.log")).read()[-4000:])
    finally:
        db.drop()


def main():
    h.need_env()
    vg = shutil.which("valgrind")
    if not vg:
        h.skip("valgrind is not installed")
    if sanitized(os.environ["COINGESTD"]):
        h.skip("coingestd is built with a sanitizer; valgrind needs a plain build")
    check = h.Check()
    work = h.tempdir("coingest-valgrind.")
    api = h.FakeAPI(work, "--universe", str(N))
    t0 = time.monotonic()
    try:
        once_run(check, vg, work, api)
        daemon_run(check, vg, work, api)
    finally:
        api.stop()
    print(f"valgrind runs took {time.monotonic() - t0:.1f} s")
    if check.failed == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    check.done()


if __name__ == "__main__":
    main()
