"""The status page at / and /status.json (issue 18, "a status page"), in headless Chromium.

The daemon runs its three jobs against the fake API (one injected 503 gives the page a warn
line) with the status page on a free port. Then:

1. /status.json: every enabled job has a last run whose rows and requests are the ones its
   job_runs row in the database says, calls this month equal SUM(job_runs.requests) of the
   month, the spool is empty, 60 minutes of rows per minute summing to at most the rows
   committed, the injected failure among the recent errors.
2. Chromium loads / (--dump-dom): every value the page shows carries data-k (its JSON path)
   and is the JSON's value (read just before and just after the page, so values that move --
   time, tokens, countdowns -- must lie between the two); the page has the numbers it must
   have (per source: plan, bucket, calls this minute and this month; per job: last run and
   next run; spool; recent errors; 60 bars), a meta refresh, and no script and no external
   asset.
3. A screenshot (1200x900 PNG) is taken; with COINGEST_UPDATE_SCREENSHOT=1 it replaces
   docs/status-page.png, which the README shows (both checked here).

Skips (77) when the chromium package is not installed (scripts/test installs it).
"""
import html.parser
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

HERE = os.environ.get("COINGEST_SOURCE_DIR", ".")
SHOT = os.path.join(HERE, "docs", "status-page.png")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


class DataK(html.parser.HTMLParser):
    """Collects (data-k, data-v or text) of every element that has data-k, plus tag names."""

    def __init__(self):
        super().__init__()
        self.values = []
        self.tags = []
        self.attrs = []
        self._open = []  # [key, value-or-None, text parts, tag]

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.attrs.append((tag, a))
        if "data-k" in a:
            self._open.append([a["data-k"], a.get("data-v"), [], tag])
        elif self._open:
            self._open.append([None, None, [], tag])

    def handle_endtag(self, tag):
        if not self._open:
            return
        k, v, text, _ = self._open.pop()
        if self._open:
            self._open[-1][2].extend(text)
        if k is not None:
            # A bar's <title> is for humans; its value is data-v.
            self.values.append((k, v if v is not None else "".join(text)))

    def handle_data(self, data):
        if self._open:
            self._open[-1][2].append(data)


def resolve(j, path):
    cur = j
    for part in path.split("."):
        if isinstance(cur, list):
            cur = cur[int(part)]
        else:
            cur = cur[part]
    return cur


def derived(j, key):
    rows = [m["rows"] for m in j["rows_per_minute"]]
    return {"rows_per_minute_total": sum(rows), "rows_per_minute_max": max(rows),
            "recent_errors_count": len(j["recent_errors"])}.get(key)


def text_of(v):
    """The page's text for a JSON value (status.c value_text)."""
    if v is None:
        return "n/a"
    if v is True:
        return "yes"
    if v is False:
        return "no"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def matches(shown, a, b):
    """shown (page text) is a's or b's text, or lies between them (values that move)."""
    ta, tb = text_of(a), text_of(b)
    if shown in (ta, tb):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        try:
            x = float(shown)
        except ValueError:
            return False
        return min(a, b) - 0.011 <= x <= max(a, b) + 0.011
    if isinstance(a, str) and isinstance(b, str) and a[:2] == "20" and b[:2] == "20":
        return min(a, b) <= shown <= max(a, b)  # ISO times sort as text
    return False


def main():
    h.need_env()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        h.skip("chromium is not installed (Debian package chromium; scripts/test installs it)")
    check = h.Check()
    work = h.tempdir("coingest-status.")
    api = db = d = None
    try:
        api = h.FakeAPI(work, "--universe", "40")
        db = h.Database(f"status_{os.getpid()}")
        port = h.free_port()
        conf = os.path.join(work, "s.conf")
        jobs = ("[job.assets]\nevery = 1h\n[job.prices]\nevery = 1m\n"
                "[job.market_caps]\nevery = 5m\n")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool"), jobs=jobs)
        text = open(conf).read().replace("metrics_listen =",
                                         f"metrics_listen = 127.0.0.1:{port}")
        text = text.replace("[source.coingecko]\n",
                            "[source.coingecko]\nmonthly_credits = 10000\n")
        text = text.replace("rate_limit = 6000/min", "rate_limit = 30/min")
        open(conf, "w").write(text)
        # One failed attempt (retried) so the page has a warn line to show.
        api.control("POST", "faults", {"match": "/simple/price", "kind": "status",
                                       "status": 503, "count": 1})
        d = h.start_daemon(conf, stderr_path=os.path.join(work, "daemon.log"))
        base = f"http://127.0.0.1:{port}"

        def status():
            try:
                return json.loads(get(base + "/status.json")[2])
            except OSError:
                return None

        def settled():
            j = status()
            # The three live jobs; history and ohlc are listed too, off (enabled false).
            if not j or len([jb for jb in j["jobs"] if jb["enabled"]]) != 3:
                return None
            if any(jb["last_run"] is None or jb["running"] for jb in j["jobs"] if jb["enabled"]):
                return None
            month = db.scalar("SELECT COALESCE(SUM(requests),0) FROM job_runs")
            if j["sources"][0]["calls_this_month"] != int(month):
                return None
            return j

        j = h.wait_for(settled, timeout=90, step=0.5,
                       what="every job run and the month's calls read")

        # --- 1. the JSON agrees with the database ----------------------------------------------
        st, ctype, _ = get(base + "/status.json")
        check(st == 200 and ctype.startswith("application/json"), f"/status.json: {st} {ctype}")
        src = j["sources"][0]
        check(src["name"] == "coingecko" and src["plan"] == "public",
              f"source and plan: {src['name']} {src['plan']}")
        for jb in (jb for jb in j["jobs"] if jb["enabled"]):
            row = db.sql(f"SELECT status, rows_written, requests FROM job_runs "
                         f"WHERE job='{jb['name']}' ORDER BY id DESC LIMIT 1")
            lr = jb["last_run"]
            check(row and [lr["status"], lr["rows"], lr["requests"]] ==
                  [row[0][0], int(row[0][1]), int(row[0][2])],
                  f"{jb['name']}: last run {lr['status']} rows={lr['rows']} "
                  f"requests={lr['requests']} is its job_runs row {row}")
            check(jb["next_run_in_s"] is not None and jb["next_run"],
                  f"{jb['name']}: next run in {jb['next_run_in_s']} s")
        month = int(db.scalar("SELECT SUM(requests) FROM job_runs"))
        check(src["calls_this_month"] == month and month > 0,
              f"calls this month {src['calls_this_month']} = SUM(job_runs.requests) {month}")
        check(src["credits_left"] == src["monthly_credits"] - month,
              f"credits left {src['credits_left']}")
        check(src["calls_since_start"] >= month, "calls since start >= the finished runs' calls")
        check(j["sink"]["spool_rows"] == 0 and j["sink"]["db"] == "up", f"sink: {j['sink']}")
        rpm = j["rows_per_minute"]
        check(len(rpm) == 60, f"60 minutes of rows ({len(rpm)})")
        check(0 < sum(m["rows"] for m in rpm) <= j["sink"]["rows_committed"],
              f"rows per minute sum {sum(m['rows'] for m in rpm)} <= committed "
              f"{j['sink']['rows_committed']}")
        check(any("request failing" in e["line"] and "503" in e["line"]
                  for e in j["recent_errors"]), "the injected 503 is among the recent errors")
        check(j["health"]["status"] == "ok", f"health {j['health']}")

        # --- 2. the page, as Chromium renders it -----------------------------------------------
        profile = os.path.join(work, "chromium-profile")
        before = status()
        p = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                            base + "/"], capture_output=True, text=True, timeout=120)
        after = status()
        dom = p.stdout
        check(p.returncode == 0 and "<html" in dom,
              f"chromium --dump-dom: rc {p.returncode}, {len(dom)} bytes {p.stderr[-300:]}")
        parser = DataK()
        parser.feed(dom)
        keys = {k for k, _ in parser.values}
        bad = []
        for k, shown in parser.values:
            shown = shown.strip()
            if derived(before, k) is not None:
                a, b = derived(before, k), derived(after, k)
            else:
                try:
                    a, b = resolve(before, k), resolve(after, k)
                except (KeyError, IndexError, ValueError, TypeError):
                    bad.append(f"{k}: not in /status.json")
                    continue
            if k.endswith(".last_run") and a is None:
                continue
            if not matches(shown, a, b):
                bad.append(f"{k}: page {shown!r}, json {text_of(a)!r}..{text_of(b)!r}")
        check(len(parser.values) > 80 and not bad,
              f"{len(parser.values)} values on the page match /status.json; mismatches: "
              f"{bad[:5]}")
        want = ["health.status", "sources.0.plan", "sources.0.bucket.tokens",
                "sources.0.bucket.queued", "sources.0.calls_last_minute",
                "sources.0.calls_this_month", "sources.0.credits_left", "sink.spool_rows",
                "recent_errors.0.line", "rows_per_minute.59.rows", "rows_per_minute_total"]
        for i in range(3):
            want += [f"jobs.{i}.last_run.status", f"jobs.{i}.last_run.rows",
                     f"jobs.{i}.last_run.duration_s", f"jobs.{i}.last_run.error",
                     f"jobs.{i}.next_run_in_s"]
        missing = [k for k in want if k not in keys]
        check(not missing, f"the page shows what it must (missing: {missing})")
        bars = [k for k in keys if k.startswith("rows_per_minute.")]
        check(len(bars) == 60, f"60 bars in the chart ({len(bars)})")
        check("script" not in parser.tags and "link" not in parser.tags and "img" not in
              parser.tags, "no script, link or img element")
        external = [(t, a) for t, a in parser.attrs
                    for v in (a.get("src"), a.get("href")) if v and "//" in v]
        check(not external, f"no external asset ({external[:2]})")
        check(any(t == "meta" and a.get("http-equiv") == "refresh" for t, a in parser.attrs),
              "a meta refresh")
        st, ctype, raw = get(base + "/")
        check(st == 200 and ctype.startswith("text/html"), f"/: {st} {ctype}")

        # --- 3. the screenshot ----------------------------------------------------------------
        shot = os.path.join(work, "status-page.png")
        p = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}2",
                            f"--screenshot={shot}", "--window-size=1200,900", base + "/"],
                           capture_output=True, text=True, timeout=120)
        ok = os.path.exists(shot) and open(shot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        check(ok and os.path.getsize(shot) > 20000,
              f"a PNG screenshot ({os.path.getsize(shot) if ok else 0} bytes) {p.stderr[-200:]}")
        if ok and os.environ.get("COINGEST_UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, SHOT)
            print("updated", SHOT)
        check(os.path.exists(SHOT) and open(SHOT, "rb").read(8) == b"\x89PNG\r\n\x1a\n",
              "docs/status-page.png is a PNG")
        readme = open(os.path.join(HERE, "README.md")).read()
        check("docs/status-page.png" in readme, "the README shows docs/status-page.png")
    finally:
        if d:
            h.stop_process(d, 30)
        if api:
            api.stop()
        if db:
            db.drop()
    check.done()


if __name__ == "__main__":
    main()
