"""Two coingestd instances on a 3-node MariaDB Galera cluster, against the fake API.

scripts/galera-private starts three nodes on loopback (rsync SST, about 10 s); instance A
talks to node 1 first, instance B to node 2 first (`[database] hosts` lists all three in
another order). Both have `[cluster] enabled` with a 4 s lease renewed every second, the same
CoinGecko key (rate_limit 60/min, burst 3) and market_caps every second, which wants more
requests than the key allows. The fake API enforces 66/min for the key (the daemon's rate
plus its burst and a little slack) and its market moves one tick every 1.5 s.

What is checked:
- one instance at a time: A starts first and holds every lease; B stands by (no job_runs row
  of B's while A lives) -- and across the whole test no two runs of one job overlap in time
  (job_runs.started_at/finished_at, with job_runs.instance naming who ran it);
- `kill -9` of A: B takes the leases over and runs the jobs (the time it took is printed);
- certification conflicts: another client on node 1 rewrites the assets rows that B's
  market_caps runs upsert on node 2, so B's commits fail certification (1213) and are retried
  (the count is printed; the row checks below cover their rows);
- `kill -9` of node 2 (B's node) mid-ingest: B's writers and lease client fail over to
  another node, and no row is lost: every /coins/markets page the fake served to B (after A
  died) has all its N rows of its tick in market_snapshots once B has stopped;
- one shared budget: the fake answered no 429, and no 10-second window of the fake's log
  holds more requests than the key's rate allows (10 + burst);
- the monthly ledger is shared: api_usage.calls for the month is at least the requests of
  every finished run (both instances), and at most what the fake saw;
- /metrics and /status.json of B name the instance and the leases it holds.

Skips (exit 77, saying why) when galera-4, mariadb-server or rsync is missing here.
ctest-labels: slow nosan
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

N = 200              # coins: one /coins/markets page of 250 holds them all
LEASE_S, RENEW_S = 4, 1
RATE_PER_MIN, BURST = 60, 3
EPOCH = 1739120400   # the fake's tick 0 (its default --epoch)
TICK_S = 60          # market time per tick (fakeapi README)


def galera(cmd, d, *args):
    script = os.path.join(os.environ["COINGEST_SOURCE_DIR"], "scripts", "galera-private")
    return subprocess.run([script, cmd, d, *args], capture_output=True, text=True)


def parse_env(text):
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v.strip('"')
    return out


def write_conf(path, work, name, hosts, db, base_url, metrics_port):
    text = f"""[daemon]
log_level = info
metrics_listen = 127.0.0.1:{metrics_port}
spool_dir = {work}/spool-{name}
shutdown_timeout = 20s

[database]
hosts = {hosts}
user = {db.user}
password = {db.password}
database = {db.name}
flush_interval = 200ms
connect_timeout = 2s

[cluster]
enabled = true
instance = {name}
lease = {LEASE_S}s
renew = {RENEW_S}s

[source.coingecko]
base_url = {base_url}
plan = public
rate_limit = {RATE_PER_MIN}/min
burst = {BURST}
timeout = 10s
max_retries = 3
backoff_base = 50ms
backoff_cap = 500ms

[source.analytics]
enabled = false

[universe]
ids = all

[job.assets]
every = 1h
run_at_start = true

[job.prices]
every = 2s
run_at_start = true

[job.market_caps]
every = 1s
run_at_start = true
"""
    with open(path, "w") as f:
        f.write(text)


def get(port, path):
    """The body, or "" while the daemon does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.read().decode()
    except OSError:
        return ""


def runs(db):
    """job_runs as (job, instance, started, finished) with times in seconds (UTC)."""
    rows = db.sql("SELECT job, instance, UNIX_TIMESTAMP(started_at), "
                  "UNIX_TIMESTAMP(finished_at) FROM job_runs ORDER BY job, started_at")
    return [(r[0], r[1], float(r[2]), float(r[3])) for r in rows]


def main():
    for k in ("COINGESTD", "FAKEAPI", "COINGEST_SOURCE_DIR"):
        if not os.environ.get(k):
            h.skip(f"{k} not set (run through ctest)")
    why = galera("check", "-")
    if why.returncode != 0:
        h.skip((why.stdout + why.stderr).strip() or "galera-private check failed")

    check = h.Check()
    work = h.tempdir("coingest-galera.")
    gdir = os.path.join(work, "galera")
    t0 = time.monotonic()
    p = galera("start", gdir, "3")
    if p.returncode != 0:
        print(p.stderr)
        h.skip("the Galera cluster did not start here (see above)")
    print(f"figure: 3-node Galera cluster up in {time.monotonic() - t0:.1f} s")
    env = parse_env(p.stdout)
    port = [None] + [env[f"COINGEST_GALERA_PORT_{i}"] for i in (1, 2, 3)]
    sock1 = env["COINGEST_GALERA_SOCKET_1"]
    api = a = b = None
    os.environ["COINGEST_TEST_DB_USER"] = "coingest"
    os.environ["COINGEST_TEST_DB_PASSWORD"] = "private-db-pw"
    try:
        db = h.Database(f"cluster_{os.getpid()}", socket=sock1)
        api = h.FakeAPI(work, "--universe", str(N), "--rate-limit", f"{RATE_PER_MIN + 6}/min")
        hosts_a = f"127.0.0.1:{port[1]}, 127.0.0.1:{port[2]}, 127.0.0.1:{port[3]}"
        hosts_b = f"127.0.0.1:{port[2]}, 127.0.0.1:{port[3]}, 127.0.0.1:{port[1]}"
        ma, mb = h.free_port(), h.free_port()
        conf_a, conf_b = os.path.join(work, "a.conf"), os.path.join(work, "b.conf")
        write_conf(conf_a, work, "inst-a", hosts_a, db, api.base_url, ma)
        write_conf(conf_b, work, "inst-b", hosts_b, db, api.base_url, mb)

        ticks = []  # (monotonic before, after, tick)

        def tick():
            before = time.monotonic()
            t = api.control("POST", "tick", {})["tick"]
            ticks.append((before, time.monotonic(), t))

        a = h.start_daemon(conf_a, stderr_path=os.path.join(work, "a.log"))
        h.wait_for(lambda: "coingest_cluster_lease_held{lease=\"budget:coingecko\"} 1"
                   in get(ma, "/metrics"), timeout=60, what="A holds the budget lease")
        b = h.start_daemon(conf_b, stderr_path=os.path.join(work, "b.log"))
        h.wait_for(lambda: "inst-b" in get(mb, "/metrics"), timeout=60, what="B is up")

        # Phase 1: both run, A is active.
        end = time.monotonic() + 12
        while time.monotonic() < end:
            tick()
            time.sleep(1.5)
        rs = runs(db)
        check(any(r[1] == "inst-a" for r in rs), f"A ran jobs ({len(rs)} runs)")
        check(any(r[0] == "assets" and r[1] == "inst-a" for r in rs),
              "A ran assets (every 1h) at start: the schedule waits for the first lease pass")
        check.eq([r for r in rs if r[1] != "inst-a"], [], "B stood by while A held the leases")
        st = json.loads(get(mb, "/status.json"))
        leases = {x["name"]: x for x in st.get("cluster", {}).get("leases", [])}
        check.eq(st.get("cluster", {}).get("instance"), "inst-b", "B's status page names it")
        check.eq((leases.get("job:market_caps") or {}).get("holder"), "inst-a",
                 "B's status page shows A holding job:market_caps")

        # kill -9 the active instance: B takes over.
        a.send_signal(signal.SIGKILL)
        a.wait()
        killed_wall, killed_mono = time.time(), time.monotonic()
        h.wait_for(lambda: any(r[1] == "inst-b" and r[0] == "market_caps" for r in runs(db)),
                   timeout=60, what="B runs market_caps after A's kill -9")
        first_b = min(r[2] for r in runs(db) if r[1] == "inst-b")
        print(f"figure: first run by B started {first_b - killed_wall:.1f} s after A's kill -9 "
              f"(lease {LEASE_S} s, renew {RENEW_S} s, market_caps every 1 s)")
        check("lease acquired" in open(os.path.join(work, "b.log")).read(),
              "B logged the leases it took over")

        # Certification conflicts: another client on node 1 keeps rewriting every assets row,
        # which each market_caps run of B's (on node 2) upserts too, so B's COMMITs meet writes
        # certified first on another node (error 1213) and must be retried, not lost.
        side = subprocess.Popen(db._args(db.name), stdin=subprocess.PIPE, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def feed():
            try:
                for _ in range(20000):
                    side.stdin.write("UPDATE assets SET updated_at = NOW(3);\n")
                side.stdin.close()
            except (BrokenPipeError, ValueError, OSError):
                pass  # killed below, as planned

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        for _ in range(6):
            tick()
            time.sleep(1.5)
        side.kill()
        side.wait(60)
        feeder.join(10)
        conflicts = 0
        for line in get(mb, "/metrics").splitlines():
            if line.startswith('coingest_write_errors_total{reason="deadlock"}'):
                conflicts = int(float(line.split()[-1]))
        print(f"figure: {conflicts} batch commits of B's met a conflicting write from node 1 "
              "and were retried")
        check(conflicts > 0, "B's writes met certification conflicts (the retry path ran)")

        # Kill B's database node while it ingests.
        tick()
        time.sleep(1.5)
        galera("kill", gdir, "2")
        node_killed_wall, node_killed_mono = time.time(), time.monotonic()
        for _ in range(6):
            tick()
            time.sleep(1.5)
        h.wait_for(lambda: any(r[1] == "inst-b" and r[0] == "market_caps" and
                               r[2] > node_killed_wall for r in runs(db)),
                   timeout=60, what="B still runs market_caps after its node died")
        metrics = get(mb, "/metrics")
        check('coingest_cluster_lease_held{lease="job:market_caps"} 1' in metrics,
              "B's /metrics: it holds job:market_caps")
        check('coingest_cluster_instance_info{instance="inst-b"} 1' in metrics,
              "B's /metrics names the instance")
        check('coingest_cluster_lease_changes_total{change="acquired",lease="budget:coingecko"}'
              in metrics or 'coingest_cluster_lease_changes_total{lease="budget:coingecko",'
              'change="acquired"}' in metrics, "B's /metrics counts the leases it acquired")
        time.sleep(3)  # a run of the last tick
        b.send_signal(signal.SIGTERM)
        check.eq(b.wait(60), 0, "B stops cleanly")
        blog = open(os.path.join(work, "b.log")).read()
        check("failed over" in blog or "reconnect" in blog.lower(),
              "B's log shows it moved to another node")

        # No overlap across instances.
        rs = runs(db)
        overlap = []
        by_job = {}
        for r in rs:
            by_job.setdefault(r[0], []).append(r)
        for job, lst in by_job.items():
            for x, y in zip(lst, lst[1:]):
                if y[2] < x[3]:
                    overlap.append((x, y))
        check.eq(overlap, [], "no two runs of one job overlap (job_runs)")
        check({r[1] for r in rs} == {"inst-a", "inst-b"}, "job_runs.instance names both")

        # No row lost: every markets page served to B has its tick's N rows.
        log = api.requests()
        served_b = [e for e in log if (e.get("route") or "").startswith("/coins/markets")
                    and e.get("status") == 200 and e["t_mono"] > killed_mono
                    and e.get("params", {}).get("page", "1") == "1"]
        checked, missing = 0, []
        for e in served_b:
            t = None
            for before, after, k in ticks:  # the tick in force when the page was served
                if e["t_mono"] >= after:
                    t = k
                elif e["t_mono"] >= before:
                    t = None  # served while the tick moved: which one is unknown
                    break
                else:
                    break
            if t is None and ticks and e["t_mono"] < ticks[0][0]:
                t = 0
            if t is None:
                continue
            lo, hi = EPOCH + TICK_S * t, EPOCH + TICK_S * t + 50
            n = db.count("market_snapshots",
                         f"snapshot_at >= FROM_UNIXTIME({lo}) AND snapshot_at < FROM_UNIXTIME({hi})")
            checked += 1
            if n != N:
                missing.append((t, n))
        served_ticks_after_node_kill = [e for e in served_b if e["t_mono"] > node_killed_mono]
        check(checked >= 5 and served_ticks_after_node_kill,
              f"pages served to B checked: {checked} ({len(served_ticks_after_node_kill)} "
              f"after the node kill)")
        check.eq(missing, [], "every page served to B is in market_snapshots, all N rows")
        check.eq(db.count("rejected_rows"), 0, "no row was rejected (conflicts are not row errors)")

        # One shared budget.
        api_reqs = [e for e in log if (e.get("route") or "").startswith("/")]
        limited = [e for e in api_reqs if e.get("status") == 429]
        check.eq(len(limited), 0, "the fake API never had to refuse (429) the shared key")
        times = sorted(e["t_mono"] for e in api_reqs)
        worst, j = 0, 0
        for i, t in enumerate(times):
            while times[j] < t - 10:
                j += 1
            worst = max(worst, i - j + 1)
        allowed = RATE_PER_MIN // 6 + BURST + 1
        print(f"figure: at most {worst} requests in a 10 s window (key: {RATE_PER_MIN}/min, "
              f"burst {BURST}; two unshared buckets could send twice that)")
        check(worst <= allowed, f"no 10 s window over the key's rate: {worst} <= {allowed}")

        # The month's ledger holds both instances' calls.
        calls = int(db.scalar("SELECT COALESCE(SUM(calls), 0) FROM api_usage "
                              "WHERE source = 'coingecko'"))
        finished = int(db.scalar("SELECT COALESCE(SUM(requests), 0) FROM job_runs"))
        print(f"figure: api_usage.calls={calls}, finished runs' requests={finished}, "
              f"fake saw {len(api_reqs)}")
        check(finished <= calls <= len(api_reqs),
              f"api_usage holds both instances' calls: {finished} <= {calls} <= {len(api_reqs)}")
    finally:
        for proc in (a, b):
            if proc and proc.poll() is None:
                proc.kill()
                proc.wait()
        if api:
            api.stop()
        galera("stop", gdir)
    check.done()


if __name__ == "__main__":
    main()
