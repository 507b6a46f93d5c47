"""Bodies within max_body_size that would blow up memory or stall the loop (issue 12, item 2).

A /coins/list answering ~8 MB of `[{},{},...]` (what a broken cache or a hostile endpoint can
send; under the default max_body_size of 64 MiB) once drove RSS to 4.6 GB and stalled the loop
for 8.8 s. Now each endpoint has a body limit of its own and a parse may allocate at most 16
bytes per byte of body (jrows): the body is refused as too large to parse, the job records it,
memory stays bounded, and /healthz keeps answering while the daemon deals with it. A body over
the endpoint's limit is refused before it is parsed at all.

The daemon runs normally (metrics_listen on a free port); a thread probes /healthz every
100 ms during the job and records the slowest answer. Figures are printed; the assertions are
bounds far above what a healthy loop needs (a probe answered at all, within 2 s; peak RSS
under 400 MB), not a benchmark.
"""
import os
import re
import signal
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402


def peak_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
            return int(m.group(1)) if m else 0
    except OSError:
        return 0


def run_case(check, work, db, name, fault, want_error):
    work = os.path.join(work, name)
    os.makedirs(work)
    api = h.FakeAPI(work, "--universe", "50")
    port = h.free_port()
    conf = os.path.join(work, f"{name}.conf")
    h.write_config(conf, db, api.base_url, os.path.join(work, f"spool-{name}"),
                   jobs="[job.prices]\nenabled = false\n[job.market_caps]\nenabled = false\n"
                   # the first 'job finished' line must be the assets run's
                   "[source.analytics]\nenabled = false\n")
    with open(conf) as f:
        text = f.read().replace("metrics_listen =", f"metrics_listen = 127.0.0.1:{port}")
    with open(conf, "w") as f:
        f.write(text)
    api.control("POST", "faults", fault)
    log_path = os.path.join(work, f"{name}.log")
    # Under ASan, freed blocks wait in its quarantine (256 MB by default) before they are
    # reused: the streamed parse frees every element, so the quarantine, not the daemon, would
    # set the peak. A small quarantine keeps the figure the daemon's own (use after free is
    # still caught for the blocks it holds).
    asan = os.environ.get("ASAN_OPTIONS", "")
    env = {"ASAN_OPTIONS": (asan + " " if asan else "") + "quarantine_size_mb=16"}
    d = h.start_daemon(conf, env=env, stderr_path=log_path)
    slowest = [0.0]
    answered = [0]
    failed = []
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    r.read()
                answered[0] += 1
                slowest[0] = max(slowest[0], time.monotonic() - t0)
            except OSError as e:
                if answered[0]:  # before the first answer the endpoint may not be up yet
                    failed.append(str(e))
            time.sleep(0.1)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        def finished():
            with open(log_path) as f:
                return "job finished" in f.read()
        h.wait_for(finished, 120, what=f"{name}: the assets run to finish")
        rss = peak_rss_kb(d.pid)
    finally:
        stop.set()
        t.join(10)
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(60)
        except Exception:
            d.kill()
        api.stop()
    with open(log_path) as f:
        log = f.read()
    line = next((ln for ln in log.splitlines() if "job finished" in ln), "")
    print(f"case={name} probes={answered[0]} slowest_healthz_s={slowest[0]:.3f} "
          f"peak_rss_kb={rss}")
    check("status=ok" not in line, f"{name}: the run is not ok: {line}")
    check(want_error in log, f"{name}: the log says {want_error!r}")
    check(answered[0] > 0 and not failed, f"{name}: every /healthz probe was answered "
                                          f"({answered[0]} answered, failures: {failed[:3]})")
    check(slowest[0] < 2.0, f"{name}: the slowest /healthz answer took {slowest[0]:.3f} s (< 2 s)")
    check(0 < rss < 400 * 1024, f"{name}: peak RSS {rss} kB stays under 400 MB")
    check("AddressSanitizer" not in log and "runtime error" not in log,
          f"{name}: no sanitizer report")


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-hostile.")
    db = h.Database(f"hostile_{os.getpid()}")
    try:
        # Within the coin list's 8 MiB limit, but 72 bytes of parser memory per byte of body.
        run_case(check, work, db, "objects",
                 {"match": "/coins/list", "kind": "big", "bytes": 7_900_000, "element": "{}",
                  "count": 20}, "too large to parse")
        # Over the coin list's limit: refused as it arrives, never parsed.
        run_case(check, work, db, "oversize",
                 {"match": "/coins/list", "kind": "big", "bytes": 20_000_000, "count": 20},
                 "response body larger than")
    finally:
        db.drop()
    check.done()


if __name__ == "__main__":
    main()
