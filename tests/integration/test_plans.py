"""CoinGecko plans against the fake API (issue 13).

1. A universe whose ranks reshuffle on every market_cap_desc request is swept with every coin
   exactly once: the whole-universe walk pages by id_asc. (The fake is first shown to churn:
   a market_cap_desc walk of the same pages misses coins and repeats others.)
2. plan = pro reads GET /key: the account's monthly credits and the month's calls replace the
   plan's defaults, the credits left show in the metrics, and the schedule is stretched to
   what is left of the month.
3. The monthly ledger survives kill -9: the calls counted before the kill are read back at the
   restart and the count goes on from there; once the month's credits are spent no request is
   sent, and the refusal is logged once, not per run.
4. A Demo key with a small credit figure (60 a month): after the runs at start the daemon fits
   the rest of the month: every job stays scheduled, prices runs less often than its 5 minutes,
   and the month's projected end (used + what the fitted schedule needs) stays within the
   credits less the reserve, also after a kill -9 and restart.
5. What the API answers when a plan runs short: the public edge's plain-text "Throttled" 429
   is waited out like any 429; a 429 that says the month's credits are spent (a key another
   client drained) stops the requests until the month rolls over, with one error line.
"""
import json
import os
import signal
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

N = 1000


def api_get(base_url, path):
    with urllib.request.urlopen(base_url + path, timeout=30) as r:
        return json.loads(r.read().decode())


def churn(check, work):
    api = h.FakeAPI(work, "--universe", str(N), "--churn-ranks")
    db = h.Database(f"plans_churn_{os.getpid()}")
    try:
        # The fake churns: four market_cap_desc pages of 250 do not cover the 1000 coins once.
        seen = []
        for page in range(1, 5):
            rows = api_get(api.base_url, "/coins/markets?vs_currency=usd&order=market_cap_desc"
                           f"&per_page=250&page={page}")
            seen += [r["id"] for r in rows]
        check(len(set(seen)) < N, f"a market_cap_desc walk under churn misses coins "
                                  f"({len(set(seen))} distinct of {len(seen)})")
        api.control("POST", "reset", {})

        conf = os.path.join(work, "churn.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool-churn"))
        rc, out, err = h.run_daemon(conf, "--once", "market_caps")
        check.eq(rc, 0, "market_caps under rank churn exits 0")
        pages = [e for e in api.requests() if e.get("route") == "/coins/markets"]
        orders = {e["params"].get("order") for e in pages}
        check.eq(orders, {"id_asc"}, "the whole-universe walk pages by id_asc")
        check.eq(db.count("market_snapshots"), N, "every coin stored")
        check.eq(db.scalar("SELECT COUNT(DISTINCT asset_id) FROM market_snapshots"), str(N),
                 "every coin once")
        # 1000 snapshots + 1000 assets rows + 1 global row: no coin fetched twice.
        check.eq(db.scalar("SELECT rows_written FROM job_runs WHERE job = 'market_caps'"),
                 str(2 * N + 1), "rows written: each coin exactly once")
    finally:
        api.stop()
        db.drop()


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric_value(text, name, labels):
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return None


def pro_key(check, work):
    api = h.FakeAPI(work, "--universe", "300", "--api-host", "pro", "--monthly-credits",
                    "5000", "--credits-used", "4899", "--key-rate", "300")
    db = h.Database(f"plans_key_{os.getpid()}")
    port = h.free_port()
    logf = os.path.join(work, "pro.err")
    d = None
    try:
        conf = os.path.join(work, "pro.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool-pro"))
        text = open(conf).read()
        text = text.replace("plan = public\nrate_limit = 6000/min\n",
                            "plan = pro\napi_key = CG-pro-test-key\n")
        text = text.replace("metrics_listen =", f"metrics_listen = 127.0.0.1:{port}")
        open(conf, "w").write(text)
        d = h.start_daemon(conf, stderr_path=logf)
        h.wait_for(lambda: "the API reported the account" in open(logf).read(), 60,
                   what="the /key answer")
        keys = [e for e in api.requests() if e.get("route") == "/key"]
        check(len(keys) >= 1, "GET /key was asked")
        check(all(e["headers"].get("x-cg-pro-api-key") == "CG-pro-test-key" for e in keys),
              "with the pro key header")
        log = open(logf).read()
        line = [x for x in log.splitlines() if "the API reported the account" in x][0]
        check("monthly_credits=5000" in line, f"the account's credits are read: {line}")
        # api_usage keeps the API's own count beside the daemon's (4899 before this daemon).
        charged = h.wait_for(lambda: db.scalar(
            "SELECT charged FROM api_usage WHERE source = 'coingecko'"), 30,
            what="api_usage.charged")
        check(charged is not None and int(charged) >= 4899,
              f"api_usage.charged is the account's count ({charged})")

        # 4899 of 5000 used, 100 kept in reserve: the metrics say so, and the schedule is
    # stretched (whatever the day of the month: one credit cannot carry prices for an hour).
        def credits_left():
            return metric_value(metrics(port), "coingest_api_credits_left", 'api="coingecko"')

        left = h.wait_for(lambda: (credits_left() or 1e9) <= 1000 and credits_left(), 30,
                          what="credits left from /key")
        check(left is not None and 0 < left <= 1000, f"credits left from the account ({left})")
        every = h.wait_for(lambda: metric_value(metrics(port), "coingest_job_interval_seconds",
                                                'job="prices"'), 30, what="job interval")
        check(every > 300, f"prices stretched beyond its 5m ({every}s)")
        log = open(logf).read()
        check("stretched_for_credits=true" in log, "the stretched schedule is logged")

        # A reload asks again; an account now with more credits relaxes the schedule.
        api.control("POST", "credits", {"credits": 10000000})
        before = len([e for e in api.requests() if e.get("route") == "/key"])
        d.send_signal(signal.SIGHUP)
        h.wait_for(lambda: len([e for e in api.requests() if e.get("route") == "/key"]) > before,
                   30, what="GET /key after the reload")
        every = h.wait_for(lambda: (metric_value(metrics(port), "coingest_job_interval_seconds",
                                                 'job="prices"') or 1e9) <= 300 and 300, 30,
                           what="prices back at 5m")
        check(every == 300, "after the reload's /key, prices runs every 5 minutes again")
    finally:
        if d:
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(30)
            except Exception:
                d.kill()
        api.stop()
        db.drop()


def ledger_kill9(check, work):
    api = h.FakeAPI(work, "--universe", "600")
    db = h.Database(f"plans_ledger_{os.getpid()}")
    logf = os.path.join(work, "ledger.err")
    try:
        conf = os.path.join(work, "ledger.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool-ledger"))
        text = open(conf).read().replace(
            "plan = public\n", "plan = demo\napi_key = CG-demo-test-key\nmonthly_credits = 100000\n")
        open(conf, "w").write(text)
        d = h.start_daemon(conf, stderr_path=logf)
        # The three jobs run at start; wait for their job_runs rows and the month's count.
        def finished():
            try:
                return db.count("job_runs", "job IN ('assets', 'prices', 'market_caps')") >= 3
            except RuntimeError:
                return False  # the schema is not there yet

        h.wait_for(finished, 120, what="the first runs")
        served = len(api.requests())

        def counted():
            v = db.scalar("SELECT COALESCE(SUM(calls), 0) FROM api_usage WHERE source = "
                          "'coingecko'")
            return int(v or 0)

        h.wait_for(lambda: counted() == served, 30, what=f"api_usage to count {served} calls")
        d.send_signal(signal.SIGKILL)
        d.wait(30)
        before = counted()
        check.eq(before, served, "every call of the finished runs was in api_usage at the kill")

        # A restart continues the month: the count goes on from `before`.
        api.control("POST", "reset", {})
        rc, out, err = h.run_daemon(conf, "--once", "prices")
        check.eq(rc, 0, "--once prices after the kill")
        after = len(api.requests())
        check(after >= 1, f"the restart made requests ({after})")
        check.eq(counted(), before + after, "the count continued across kill -9")

        # The month nearly spent: credits = count + 2, no reserve. The next run may send two
        # requests and then none; a second run sends nothing; one error line per process run.
        used = counted()
        env = {"COINGEST_COINGECKO_MONTHLY_CREDITS": str(used + 2)}
        text = open(conf).read().replace("monthly_credits = 100000\n",
                                         "monthly_credits = 100000\ncredit_reserve = 0\n")
        open(conf, "w").write(text)
        api.control("POST", "reset", {})
        rc, out, err = h.run_daemon(conf, "--once", "prices,market_caps", env=env)
        check(rc != 0, f"runs refused for credits fail (rc {rc})")
        sent = len(api.requests())
        check(sent <= 2, f"at most the two credits left were spent ({sent})")
        check(counted() <= used + 2, f"the count never passes the credits ({counted()})")
        check.eq(err.count("monthly credits exhausted; no request is sent"), 1,
                 "the exhaustion is logged once, not per run")
        api.control("POST", "reset", {})
        rc, out, err = h.run_daemon(conf, "--once", "prices", env=env)
        check.eq(len(api.requests()), 0, "a later run sends nothing")
        check(db.count("job_runs", "error LIKE 'monthly credits exhausted%'") >= 2,
              "the runs record why they failed")
    finally:
        api.stop()
        db.drop()


def small_month(check, work):
    api = h.FakeAPI(work, "--universe", "600")
    db = h.Database(f"plans_month_{os.getpid()}")
    port = h.free_port()
    env = {"COINGEST_COINGECKO_PLAN": "demo", "COINGEST_COINGECKO_API_KEY": "CG-demo-test-key",
           "COINGEST_COINGECKO_MONTHLY_CREDITS": "60"}
    try:
        conf = os.path.join(work, "month.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool-month"))
        text = open(conf).read().replace("plan = public\n", "")
        text = text.replace("metrics_listen =", f"metrics_listen = 127.0.0.1:{port}")
        open(conf, "w").write(text)
        usable = 60 - 60 // 50
        for round_ in (1, 2):
            logf = os.path.join(work, f"month{round_}.err")
            d = h.start_daemon(conf, env=env, stderr_path=logf)

            def settled():
                try:
                    n = db.count("job_runs", "job IN ('assets', 'prices', 'market_caps')")
                except RuntimeError:
                    return False
                return n >= 3 * round_

            h.wait_for(settled, 120, what=f"the runs at start ({round_})")
            time.sleep(0.5)  # the refit after the last run
            m = metrics(port)
            projected = metric_value(m, "coingest_api_credits_projected", 'api="coingecko"')
            used = metric_value(m, "coingest_api_calls_month", 'api="coingecko"')
            check(projected is not None and projected <= usable,
                  f"start {round_}: the month ends within {usable} credits ({used} used, "
                  f"{projected} projected)")
            every = {j: metric_value(m, "coingest_job_interval_seconds", f'job="{j}"')
                     for j in ("assets", "prices", "market_caps")}
            check(all(v and v >= c for v, c in zip(every.values(), (86400, 300, 3600))),
                  f"start {round_}: no job runs more often than configured ({every})")
            check(every["prices"] > 300, f"start {round_}: prices stretched ({every['prices']}s)")
            d.send_signal(signal.SIGKILL)
            d.wait(30)
        calls = int(db.scalar("SELECT COALESCE(SUM(calls), 0) FROM api_usage") or 0)
        check(calls <= usable, f"after two starts and a kill -9 the month used {calls} of "
                               f"{usable}")
    finally:
        api.stop()
        db.drop()


def api_refusals(check, work):
    api = h.FakeAPI(work, "--universe", "300", "--rate-limit", "2/s", "--throttled-text")
    db = h.Database(f"plans_refusals_{os.getpid()}")
    try:
        conf = os.path.join(work, "thr.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool-thr"),
                       universe="ids = coin-00010, coin-00011")
        text = open(conf).read().replace("max_retries = 3", "max_retries = 10")
        open(conf, "w").write(text)
        rc, out, err = h.run_daemon(conf, "--once", "prices,market_caps,prices")
        log = api.requests()
        throttled = [e for e in log if e.get("status") == 429]
        check(len(throttled) > 0, f"the fake answered 'Throttled' ({len(throttled)} times)")
        check.eq(rc, 0, "runs through plain-text 429s succeed")
        check.eq(db.count("prices"), 2, "every price stored")
    finally:
        api.stop()
        db.drop()

    work = os.path.join(work, "drained")  # a fake API of its own: its own port file
    os.mkdir(work)
    api = h.FakeAPI(work, "--universe", "300", "--monthly-credits", "3")
    db = h.Database(f"plans_drained_{os.getpid()}")
    try:
        conf = os.path.join(work, "drained.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool-drained"),
                       universe="ids = coin-00001, coin-00002")
        rc, out, err = h.run_daemon(conf, "--once", "prices,market_caps,prices,market_caps")
        log = api.requests()
        refused = [e for e in log if e.get("status") == 429]
        check(len(refused) >= 1, "the fake refused for credits")
        first = min(e["seq"] for e in refused)
        after = [e for e in log if e["seq"] > first and e.get("status") != 429]
        check.eq(after, [], "nothing served after the month was spent")
        # The refusal is final: not retried, and nothing is sent after it.
        check.eq(len(refused), 1, "no storm of requests")
        check.eq(err.count("the API says the month's credits are spent"), 1, "one error line")
        check(rc != 0, "the runs that could not send fail")
    finally:
        api.stop()
        db.drop()


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-plans.")
    for part in (churn, pro_key, ledger_kill9, small_month, api_refusals):
        # Each part its own directory: the fake API's port file and log live there.
        d = os.path.join(work, part.__name__)
        os.mkdir(d)
        part(check, d)
    check.done()


if __name__ == "__main__":
    main()
