"""A 429 in the middle of pagination: the run waits as advised and resumes at the page it
stopped on. No page is skipped, none is fetched twice, and no request comes before the
advised Retry-After.

The fake API enforces a server-side limit (3 requests per second) far below what the
daemon's own bucket allows, so the markets walk is interrupted by 429s with Retry-After.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

N = 1000  # four full pages of 250 and an empty fifth


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-429.")
    api = h.FakeAPI(work, "--universe", str(N), "--rate-limit", "3/s")
    db = h.Database(f"resume429_{os.getpid()}")
    try:
        conf = os.path.join(work, "r.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool"))
        # max_retries must cover several 429s in a row for one page.
        text = open(conf).read().replace("max_retries = 3", "max_retries = 10")
        open(conf, "w").write(text)
        rc, out, err = h.run_daemon(conf, "--once", "market_caps")
        print(out)
        check.eq(rc, 0, "market_caps under a server-side limit exits 0")
        check.eq(db.count("market_snapshots"), N, "every coin stored despite the 429s")

        log = api.requests()
        markets = [e for e in log if (e.get("route") or "").startswith("/coins/markets")]
        served = [int(e["params"].get("page", "1")) for e in markets if e.get("status") == 200]
        limited = [e for e in log if e.get("status") == 429]
        check(len(limited) > 0, f"the server answered 429 ({len(limited)} times)")
        check.eq(served, sorted(set(served)), "each page served once, in order")
        check.eq(served, list(range(1, served[-1] + 1)) if served else [], "no page skipped")
        check(served and served[-1] >= N // 250, f"walked to the last page ({served})")

        # No request came before the advised wait (Retry-After is whole seconds).
        early = 0
        for i, e in enumerate(log):
            if e.get("status") != 429 or i + 1 >= len(log):
                continue
            wait = 1.0
            hdr = (e.get("response_headers") or {}).get("Retry-After")
            if hdr:
                wait = float(hdr)
            nxt = log[i + 1]
            if nxt["t_mono"] < e["t_mono"] + wait - 0.05:
                early += 1
                print("early request", nxt["t_mono"] - e["t_mono"], "advised", wait)
        check.eq(early, 0, "no request before the advised Retry-After")
        check("rate limited" in err or "429" in err, "the advised wait is logged")
        check(err.count("rate limited") <= len(limited), "logged once per episode at most")
    finally:
        api.stop()
        db.drop()
    check.done()


if __name__ == "__main__":
    main()
