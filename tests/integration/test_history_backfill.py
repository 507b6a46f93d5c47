"""CoinGecko history end to end: the real daemon, a private database, the fake API's synthetic
universe (tests/fakeapi/cg_history.py serves market_chart/range with CoinGecko's granularity
rules, its 365-day refusal, gaps and late-listed coins). ctest-labels: slow

1. A daily backfill of 1,000 assets x 365 days (`coingestd --once history`, the API
   unthrottled) is killed with SIGKILL twice midway and then run to completion. Then:
   - every coin's stored days are exactly the fake's points over the span (the fake's own
     oracle, cg_history.series_points): no gap other than the fake's, nothing outside;
   - no duplicates (the key forbids them; the per-coin counts say every point is there once);
   - the runs after each kill resumed from candle_fill: together they asked for fewer
     windows than two whole backfills;
   - every series' mark is at the end of the span; one job_runs row per pass.
2. While a backfill runs in the daemon (a fresh database, the API paced at 20 requests/s),
   the prices job keeps its schedule: no run of it is skipped, and each of its runs gets its
   requests through ahead of the backfill's queue: between a prices run's start and its first
   request at most two backfill requests reach the API (the one in flight and one granted
   before the run's request was queued). The backfill keeps one request in flight, so this
   holds by that design as much as by the bucket's priority classes, which
   tests/unit/test_tbucket.c proves on its own.
3. Two ohlc passes: candles keyed by open time (close - interval), the still-open last candle
   of each coin rewritten in place, the closed ones unchanged, none twice.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

sys.path.insert(0, os.path.join(os.environ.get("COINGEST_SOURCE_DIR", "."), "tests", "fakeapi"))

DAY = 86400
N = 1000


def main():
    h.need_env()
    import cg_history  # noqa: E402  (needs the source dir)
    check = h.Check()
    work = h.tempdir("cg-history-")
    fake = h.FakeAPI(work, "--universe", str(N))
    try:
        backfill_killed_twice(check, work, fake, cg_history)
        live_keeps_schedule(check, work, fake)
        ohlc_in_place(check, work, fake)
    finally:
        fake.stop()
    check.done()


def config(work, db, fake, name, rate, extra):
    conf = os.path.join(work, name)
    h.write_config(conf, db, fake.base_url, os.path.join(work, "spool-" + name), rate=rate,
                   extra="vs_currencies = usd",
                   jobs=extra + "[source.analytics]\nenabled = false\n")
    return conf


def backfill_killed_twice(check, work, fake, cg_history):
    db = h.Database("cg_history_backfill")
    try:
        conf = config(work, db, fake, "a.conf", "100000/s",
                      "[job.history]\nenabled = true\ndays = 365\ngranularity = daily\n")
        rc, out, err = h.run_daemon(conf, "--once", "assets", timeout=120)
        check.eq(rc, 0, "assets" if rc == 0 else f"assets ({err.strip()[-300:]})")
        check.eq(db.count("assets"), N, "the universe is listed")

        # The killed runs are paced (250 requests/s) so that "midway" does not depend on how
        # fast the machine is; the run that completes is not.
        paced = config(work, db, fake, "a-paced.conf", "250/s",
                       "[job.history]\nenabled = true\ndays = 365\ngranularity = daily\n")
        for k, marks in enumerate((250, 600)):
            p = h.start_daemon(paced, "--once", "history",
                               stderr_path=os.path.join(work, f"run{k + 1}.log"))
            try:
                h.wait_for(lambda: db.count("candle_fill") >= marks or p.poll() is not None, 120,
                           what=f"{marks} series stored")
            finally:
                killed = p.poll() is None
                if killed:
                    p.send_signal(signal.SIGKILL)
                p.wait(30)
            check(killed, f"run {k + 1} was killed midway")
            got = db.count("candle_fill")
            check(got < N, f"run {k + 1} stopped partway ({got} series marked)")

        t0 = time.time()
        rc, out, err = h.run_daemon(conf, "--once", "history", timeout=300)
        check.eq(rc, 0, "run 3 exit code" if rc == 0 else f"run 3 ({err.strip()[-500:]})")
        print(f"run 3 took {time.time() - t0:.1f}s")
        reqs = [r for r in fake.requests() if r["path"].endswith("/market_chart/range")]
        n_req = len(reqs)
        check(N <= n_req < 2 * N, f"the runs resumed: {n_req} windows asked for {N} series")
        refused = [r for r in reqs if r["status"] == 401]
        check.eq(len(refused), 0, "no window asked before the plan's reach")

        # The span as the daemon computes it (docs/history.md): the first midnight inside the
        # last 365 days up to today's midnight (tomorrow's once today's point is an hour old).
        now = int(time.time())
        start = (now - 365 * DAY + DAY - 1) // DAY * DAY
        end = (now - 3600) // DAY * DAY + DAY
        stored = {}
        for cid, t in db.sql("SELECT asset_id, UNIX_TIMESTAMP(source_updated_at) FROM prices"
                             " WHERE source = 'coingecko' AND vs_currency = 'usd'"):
            stored.setdefault(cid, []).append(int(float(t)))
        total = sum(len(v) for v in stored.values())
        check.eq(db.count("prices"), total, "every prices row is a backfilled usd row")
        dup = db.scalar("SELECT COUNT(*) - COUNT(DISTINCT asset_id, source_updated_at) FROM prices")
        check.eq(int(dup), 0, "no point stored twice")
        coins = {c["id"]: c for c in fake_universe(cg_history, N)}
        bad = []
        want_total = 0
        for cid, coin in coins.items():
            want = [t // 1000 for t in cg_history.series_points(coin, start, end - 1, now)]
            want_total += len(want)
            got = sorted(stored.get(cid, []))
            if got != want:
                bad.append((cid, len(got), len(want), sorted(set(want) - set(got))[:2],
                            sorted(set(got) - set(want))[:2]))
        check(not bad, f"every coin's days are the fake's ({len(bad)} differ: {bad[:3]})")
        check.eq(total, want_total, "rows stored")
        print(f"{total} rows for {N} coins")
        check.eq(db.count("candle_fill", f"source = 'coingecko' AND interval_s = 86400 AND "
                                         f"UNIX_TIMESTAMP(filled_to) = {end}"), N,
                 "every series is marked at the end of the span")
        runs = db.sql("SELECT status FROM job_runs WHERE job = 'history'")
        check.eq([r[0] for r in runs][-1:], ["ok"], "the last pass is ok")
        check(1 <= len(runs) <= 3, f"one job_runs row per pass that ended ({len(runs)})")
    finally:
        db.drop()


def fake_universe(cg_history, n):
    """The fake's coins, rebuilt the way fakeapi.py builds them."""
    import importlib
    fa = importlib.import_module("fakeapi")
    u = fa.Universe(n, fa.EPOCH_DEFAULT)
    return u.coins


def live_keeps_schedule(check, work, fake):
    db = h.Database("cg_history_live")
    try:
        conf = config(work, db, fake, "b.conf", "20/s",
                      "[job.history]\nenabled = true\ndays = 365\ngranularity = daily\n"
                      "top = 300\nalign = false\n"
                      "[job.prices]\nevery = 2s\nalign = false\n"
                      "[job.assets]\nrun_at_start = false\n"
                      "[job.market_caps]\nenabled = false\n")
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace("burst = 10", "burst = 1"))
        rc, out, err = h.run_daemon(conf, "--once", "assets", timeout=120)
        check.eq(rc, 0, "assets for the daemon")
        fake.control("POST", "reset")
        p = h.start_daemon(conf, stderr_path=os.path.join(work, "daemon.log"))
        try:
            h.wait_for(lambda: db.count("job_runs", "job = 'history'") >= 1 or p.poll() is not None,
                       180, what="the backfill pass")
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            p.wait(60)
        hist = db.sql("SELECT UNIX_TIMESTAMP(started_at), UNIX_TIMESTAMP(finished_at), status"
                      " FROM job_runs WHERE job = 'history' ORDER BY started_at")
        check(len(hist) >= 1 and hist[0][2] == "ok", f"the backfill pass ended ok ({hist})")
        if not hist:
            return
        h0, h1 = float(hist[0][0]), float(hist[0][1])
        runs = [(float(a), float(b)) for a, b in db.sql(
            "SELECT UNIX_TIMESTAMP(started_at), UNIX_TIMESTAMP(finished_at) FROM job_runs"
            " WHERE job = 'prices' ORDER BY started_at")]
        during = [r for r in runs if h0 <= r[0] and r[1] <= h1]
        reqs = sorted(fake.requests(), key=lambda r: r["t_wall"])
        hist_reqs = [r for r in reqs if r["path"].endswith("/market_chart/range")]
        check(len(hist_reqs) >= 300, f"the backfill asked for its windows ({len(hist_reqs)})")
        check(len(during) >= 3, f"prices ran during the backfill ({len(during)} runs)")
        # Every 2 s, none skipped: consecutive runs start about `every` apart (a skipped tick
        # would leave a gap of two periods).
        gaps = [b[0] - a[0] for a, b in zip(during, during[1:])]
        check(all(g < 3.5 for g in gaps), f"no prices run was skipped (gaps {gaps[:20]})")
        ahead = []
        for s, e in during:
            live = [r for r in reqs if s <= r["t_wall"] <= e + 0.05
                    and not r["path"].endswith("/market_chart/range")]
            if not live:
                ahead.append(None)
                continue
            first = live[0]["t_wall"]
            ahead.append(sum(1 for r in hist_reqs if s <= r["t_wall"] < first))
        check(all(a is not None and a <= 2 for a in ahead),
              f"each prices run went ahead of the backfill's queue (backfill requests before "
              f"its first request: {ahead})")
    finally:
        db.drop()


def ohlc_in_place(check, work, fake):
    """Two ohlc passes: candles keyed by their open time (close less the interval), the still-open
    last one rewritten in place, none twice."""
    db = h.Database("cg_history_ohlc")
    try:
        conf = config(work, db, fake, "c.conf", "100000/s",
                      "[job.ohlc]\nenabled = true\ndays = 7\ntop = 5\n")
        rc, out, err = h.run_daemon(conf, "--once", "assets", timeout=120)
        check.eq(rc, 0, "assets for ohlc")
        q = ("SELECT asset_id, UNIX_TIMESTAMP(open_time), interval_s, close, fetched_at"
             " FROM candles WHERE source = 'coingecko' ORDER BY asset_id, open_time")
        rc, out, err = h.run_daemon(conf, "--once", "ohlc", timeout=120)
        check.eq(rc, 0, "ohlc pass 1" if rc == 0 else f"ohlc pass 1 ({err.strip()[-300:]})")
        first = db.sql(q)
        time.sleep(1.2)
        rc, out, err = h.run_daemon(conf, "--once", "ohlc", timeout=120)
        check.eq(rc, 0, "ohlc pass 2")
        second = db.sql(q)
        now = time.time()
        check(len(first) >= 5 * 42 and len(second) == len(first),
              f"candles stored once: {len(first)} then {len(second)}")
        check(all(int(float(r[1])) % 14400 == 0 and r[2] == "14400" for r in second),
              "open times on the 4-hour grid, interval_s 14400")
        open_ = [r for r in second if float(r[1]) + 14400 > now]
        check.eq(len(open_), 5, "one still-open candle per coin")
        before = {(r[0], r[1]): r for r in first}
        moved = [r for r in open_ if before.get((r[0], r[1])) and before[(r[0], r[1])][3] != r[3]]
        check.eq(len(moved), 5, "the open candles were rewritten in place by pass 2 (close)")
        closed = [r for r in second if float(r[1]) + 14400 <= now - 5]
        same = [r for r in closed if before.get((r[0], r[1])) and before[(r[0], r[1])][3] == r[3]]
        check(len(closed) > 0 and len(same) == len(closed), "closed candles stay as they were")
    finally:
        db.drop()


if __name__ == "__main__":
    main()
