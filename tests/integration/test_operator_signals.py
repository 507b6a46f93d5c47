"""Failures an operator can see, and a prompt stop (issue 18, findings 1 and 2).

1. The API fails every request (HTTP 503) and log_level = warn: a "request failing" warn line
   appears within 10 s, the storm of failed attempts is rate-limited (one warn line a minute per
   API, carrying the count of the rest), the failed run is an error line, and /healthz answers
   200 "degraded" naming the source and the job within one run. A SIGHUP to log_level = info,
   then the faults are cleared: "requests succeed again" and "job recovered" are info lines and
   /healthz is "ok" again.
2. A retry storm with long backoffs (max_retries = 10, backoff 2 s .. 30 s, shutdown_timeout
   30 s): SIGINT ends the daemon in under 3 s, the "stopped" line says nothing went to the
   spool, and the runs' job_runs rows are in the database (it was up the whole time).
   Before the fix the stop waited the whole shutdown_timeout and spooled those rows.
3. A transfer that hangs (the API holds its answer for 60 s): SIGINT cancels it after the
   in-flight grace (1 s) and the daemon is gone in under 3 s, again with nothing spooled.
"""
import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402


def health(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())
    except OSError:
        return None, {}


def lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def config(path, db, api, spool, port, log_level, source_keys, daemon_keys="", jobs=""):
    h.write_config(path, db, api.base_url, spool, jobs=jobs)
    text = open(path).read()
    text = text.replace("log_level = info", f"log_level = {log_level}")
    text = text.replace("metrics_listen =", f"metrics_listen = 127.0.0.1:{port}" if port else
                        "metrics_listen =")
    text = re.sub(r"max_retries = .*\nbackoff_base = .*\nbackoff_cap = .*\n", source_keys, text)
    text = text.replace("shutdown_timeout = 20s", daemon_keys or "shutdown_timeout = 20s")
    open(path, "w").write(text)


def stop_and_time(d, check, what):
    """SIGINT; returns the seconds until the process was gone (None if it outlived 40 s)."""
    t0 = time.monotonic()
    d.send_signal(signal.SIGINT)
    try:
        d.wait(40)
    except Exception:
        d.kill()
        d.wait()
        check(False, f"{what}: the daemon outlived 40 s after SIGINT")
        return None
    return time.monotonic() - t0


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-opsig.")
    api = db = d = None
    try:
        api = h.FakeAPI(work, "--universe", "20")
        db = h.Database(f"opsig_{os.getpid()}")
        jobs = ("[job.assets]\nevery = 5s\n[job.prices]\nevery = 3s\n"
                "[job.market_caps]\nenabled = false\n"
                # analytics runs at start and its runs are ok: this test counts the others
                "[source.analytics]\nenabled = false\n")

        # --- 1. failures at warn, degraded, recovery at info ----------------------------------
        port = h.free_port()
        conf = os.path.join(work, "one.conf")
        err = os.path.join(work, "one.log")
        fast = "max_retries = 2\nbackoff_base = 100ms\nbackoff_cap = 300ms\n"
        config(conf, db, api, os.path.join(work, "spool1"), port, "warn", fast, jobs=jobs)
        api.control("POST", "faults", {"kind": "status", "status": 503, "count": 100000})
        t0 = time.monotonic()
        d = h.start_daemon(conf, stderr_path=err)
        warn = h.wait_for(lambda: [ln for ln in lines(err) if "msg=\"request failing\"" in ln],
                          timeout=30, what="a request failing line")
        took = time.monotonic() - t0
        check(took < 10, f"a 'request failing' warn line within 10 s of start ({took:.1f} s)")
        check("level=warn" in warn[0] and "api=coingecko" in warn[0] and "503" in warn[0],
              f"it is a warn line naming the API and the status: {warn[0]}")

        st, body = h.wait_for(lambda: (lambda r: r if r[1].get("status") == "degraded" else None)
                              (health(port)), timeout=30, what="/healthz degraded")
        check(st == 200, f"/healthz degraded answers 200 (got {st})")
        reason = body.get("reason", "")
        check("coingecko" in reason and ("prices" in reason or "assets" in reason),
              f"the reason names the source and the job: {reason}")
        errs = [ln for ln in lines(err) if "msg=\"job finished\"" in ln and "status=failed" in ln]
        check(errs and all("level=error" in ln for ln in errs),
              f"a failed run is an error line ({len(errs)} seen)")

        # A storm of failed attempts within a minute is one warn line (plus the 429-free
        # rest counted in it): every run makes 3 attempts per request, every 3 s.
        h.wait_for(lambda: api.control("GET", "state")["requests"] >= 15, timeout=60,
                   what="15 failed attempts")
        n_warn = len([ln for ln in lines(err) if "msg=\"request failing\"" in ln])
        n_req = api.control("GET", "state")["requests"]
        check(n_warn <= 2, f"{n_req} failed attempts gave {n_warn} 'request failing' lines")
        info = [ln for ln in lines(err) if "level=info" in ln and "msg=\"stop" not in ln]
        check(not info, f"log_level = warn: no info lines ({len(info)})")

        # Recovery is said at info.
        text = open(conf).read().replace("log_level = warn", "log_level = info")
        open(conf, "w").write(text)
        d.send_signal(signal.SIGHUP)
        h.wait_for(lambda: any("configuration reloaded" in ln for ln in lines(err)), timeout=20,
                   what="the reload")
        api.control("DELETE", "faults")
        rec = h.wait_for(lambda: [ln for ln in lines(err) if "requests succeed again" in ln],
                         timeout=60, what="requests succeed again")
        check("level=info" in rec[0] and "failures=" in rec[0], f"recovery line: {rec[0]}")
        jr = h.wait_for(lambda: [ln for ln in lines(err) if "msg=\"job recovered\"" in ln],
                        timeout=60, what="job recovered")
        check("level=info" in jr[0], f"job recovery line: {jr[0]}")
        h.wait_for(lambda: health(port)[1].get("status") == "ok", timeout=60,
                   what="/healthz ok again (every failing job ran again)")
        check(True, "/healthz is ok again once every job succeeded")
        d.send_signal(signal.SIGTERM)
        d.wait(30)
        d = None

        # --- 2. Ctrl-C during a retry storm ---------------------------------------------------
        db.sql("DELETE FROM job_runs")
        conf2 = os.path.join(work, "two.conf")
        err2 = os.path.join(work, "two.log")
        spool2 = os.path.join(work, "spool2")
        slow = "max_retries = 10\nbackoff_base = 2s\nbackoff_cap = 30s\n"
        config(conf2, db, api, spool2, None, "info", slow, "shutdown_timeout = 30s", jobs=jobs)
        api.control("POST", "faults", {"kind": "status", "status": 503, "count": 100000})
        d = h.start_daemon(conf2, stderr_path=err2)
        h.wait_for(lambda: any("request failing" in ln for ln in lines(err2)), timeout=30,
                   what="the storm")
        h.wait_for(lambda: any("ready" in ln for ln in lines(err2)), timeout=30,
                   what="the database")
        time.sleep(1.5)  # into a backoff wait
        took = stop_and_time(d, check, "retry storm")
        d = None
        if took is not None:
            check(took < 3, f"SIGINT during a retry storm: gone in {took:.2f} s (< 3 s)")
        stopped = [ln for ln in lines(err2) if "msg=stopped" in ln]
        check(stopped and "rows_in_spool=0" in stopped[-1],
              f"nothing spooled: {stopped[-1] if stopped else 'no stopped line'}")
        runs = db.sql("SELECT job, status, error FROM job_runs ORDER BY id")
        check(len(runs) >= 2, f"the cancelled runs' job_runs rows are committed: {runs}")
        check(all(r[1] == "failed" for r in runs), "and they say failed")
        bad = [ln for ln in lines(err2) if "level=error" in ln]
        check(not bad, f"a stop is no error: {bad[:2]}")

        # --- 3. a transfer that hangs ---------------------------------------------------------
        api.control("DELETE", "faults")
        db.sql("DELETE FROM job_runs")
        err3 = os.path.join(work, "three.log")
        config(conf2, db, api, os.path.join(work, "spool3"), None, "info", slow,
               "shutdown_timeout = 30s", jobs=jobs)
        api.control("POST", "faults", {"kind": "delay", "seconds": 60, "count": 100})
        d = h.start_daemon(conf2, stderr_path=err3)
        h.wait_for(lambda: any("ready" in ln for ln in lines(err3)), timeout=30,
                   what="the database")
        h.wait_for(lambda: any(r.get("status") is None for r in api.requests()), timeout=30,
                   what="a request the API holds")
        took = stop_and_time(d, check, "hanging transfer")
        d = None
        if took is not None:
            check(took < 3, f"SIGINT with a transfer hanging: gone in {took:.2f} s (< 3 s)")
        stopped = [ln for ln in lines(err3) if "msg=stopped" in ln]
        check(stopped and "rows_in_spool=0" in stopped[-1],
              f"nothing spooled: {stopped[-1] if stopped else 'no stopped line'}")
        check(any("cancelling the transfers still in flight" in ln for ln in lines(err3)),
              "the log says the transfers in flight were cancelled")
        check(db.count("job_runs") >= 1, "the cancelled run's job_runs row is committed")
    finally:
        if d and d.poll() is None:
            d.kill()
            d.wait()
        if api:
            api.stop()
        if db:
            db.drop()
    check.done()


if __name__ == "__main__":
    main()
