"""The export job's upload to S3 (docs/export.md, "S3"), against s3rver (npm) behind a proxy
that verifies every request's SigV4 signature on its own (s3check.py).

s3rver is installed by this test into the build tree (COINGEST_BUILD_DIR/npm-cache); when npm
cannot install it the test SKIPs (exit 77) and says why.

1. A week of 1,000 assets exported and uploaded: every request is correctly signed (payload
   hash, Content-MD5, canonical URI with date%3D), two injected 503s are retried, every part and
   manifest in the bucket equals the local file byte for byte, each day's _upload.json says
   it is done; a second run uploads nothing.
2. A day that shrinks (most of its rows deleted) is exported again in fewer parts: the run
   uploads that day only, and deletes the parts the old export had and the new one has not.
3. The uploads keep to their own token bucket: at s3_requests_per_second = 40 (burst 40), the
   requests of a full upload span at least (n - 40) / 40 seconds (a lower bound only, less
   the loop clock's slack).
4. kill -9 in the middle of the uploads to a new prefix: every part _upload.json marks as
   uploaded is in the bucket with its sha256, the local files are intact; the next run
   completes the bucket.
"""
import glob
import hashlib
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402
import s3check  # noqa: E402
from exportcheck import TABLES, day_valid, prepare  # noqa: E402

# A lower bound on pacing allows the loop clock's slack (tests/support/fakeapi_proc.h,
# FAKEAPI_CLOCK_SLACK_S, 5 ms) plus what the proxy's arrival times add: each is taken after the
# body is read and its signature checked, which takes longer for a 64 kB part than for a
# manifest, so the first and the last request of a run can be a few ms closer than granted.
SLACK_S = 0.05


def main():
    h.need_env()
    cache = os.path.join(os.environ.get("COINGEST_BUILD_DIR", "/tmp"), "npm-cache", "s3rver")
    binary, why = s3check.install_s3rver(cache)
    if not binary:
        h.skip(why)
    c = h.Check()
    bad = s3check.self_test()
    c(not bad, f"the SigV4 verifier refuses what it must and accepts a correct request: {bad}")
    work, db, out, conf, write_conf, dates = prepare(h, c, "coingest-export-s3-",
                                                     "coingest_it_export_s3")

    s3 = s3check.S3(binary, work, "coingest-lake")
    env = {"AWS_ACCESS_KEY_ID": s3check.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": s3check.SECRET_KEY}
    try:
        def s3conf(prefix):
            write_conf(out, f"""s3_bucket = coingest-lake
s3_prefix = {prefix}
s3_region = {s3check.REGION}
s3_endpoint = {s3.endpoint}
s3_path_style = true
s3_requests_per_second = 200
""")

        def check_bucket(prefix):
            bad = []
            for t in TABLES:
                for d in dates:
                    dd = os.path.join(out, t, f"date={d}")
                    m = json.load(open(os.path.join(dd, "_manifest.json")))
                    for f in m["files"]:
                        st, data = s3.get(f"{prefix}/{t}/date={d}/{f['name']}")
                        if st != 200 or hashlib.sha256(data).hexdigest() != f["sha256"]:
                            bad.append((t, d, f["name"], st))
                    st, data = s3.get(f"{prefix}/{t}/date={d}/_manifest.json")
                    if st != 200 or data != open(os.path.join(dd, "_manifest.json"), "rb").read():
                        bad.append((t, d, "_manifest.json", st))
                    up = json.load(open(os.path.join(dd, "_upload.json")))
                    if "manifest_uploaded_at" not in up:
                        bad.append((t, d, "_upload.json", up))
            return bad

        s3conf("lake/v1")
        s3.proxy.fail_next = 2
        rc, _, err = h.run_daemon(conf, "--once", "export", env=env)
        c.eq(rc, 0, "export with upload exits 0")
        if rc:
            print(err[-3000:])
        c.eq(s3.proxy.failures, [], "every request carried a valid SigV4 signature")
        nfiles = sum(len(json.load(open(m))["files"]) + 1
                     for m in glob.glob(os.path.join(out, "*", "date=*", "_manifest.json")))
        c.eq(s3.proxy.puts, nfiles + 2, "every part and manifest PUT once, plus 2 retried 503s")
        bad = check_bucket("lake/v1")
        c(not bad, f"the bucket holds every part and manifest byte for byte: {bad[:3]}")
        before_puts = s3.proxy.puts
        rc, _, err = h.run_daemon(conf, "--once", "export", env=env)
        c.eq((rc, s3.proxy.puts), (0, before_puts), "a second run uploads nothing")

        # A day that shrinks: fewer parts, the old extra parts deleted from the bucket.
        day = dates[2]
        dd = os.path.join(out, "prices", f"date={day}")
        old = json.load(open(os.path.join(dd, "_manifest.json")))
        db.sql(f"DELETE FROM prices WHERE source_updated_at >= '{day}' AND "
               f"source_updated_at < '{day}' + INTERVAL 1 DAY AND asset_id NOT LIKE 'coin-1_'")
        before_puts, before_deletes = s3.proxy.puts, s3.proxy.deletes
        rc, _, err = h.run_daemon(conf, "--once", "export", env=env)
        c.eq(rc, 0, "the run after a day shrank exits 0")
        new = json.load(open(os.path.join(dd, "_manifest.json")))
        gone = sorted({f["name"] for f in old["files"]} - {f["name"] for f in new["files"]})
        c.eq(sorted(new["stale"]), gone, f"the manifest lists the {len(gone)} parts that went")
        c(len(gone) >= 2, "the shrunk day has fewer parts")
        c.eq(s3.proxy.puts - before_puts, len(new["files"]) + 1,
             "only that day's parts and manifest are uploaded")
        c.eq(s3.proxy.deletes - before_deletes, len(gone), "one DELETE per part that went")
        statuses = [s3.get(f"lake/v1/prices/date={day}/{n}")[0] for n in gone]
        c.eq(statuses, [404] * len(gone), "those parts are no longer in the bucket")
        bad = check_bucket("lake/v1")
        c(not bad, f"the bucket matches the local export again: {bad[:3]}")

        # Pacing: a full upload to a new prefix at 40 requests a second.
        write_conf(out, f"""s3_bucket = coingest-lake
s3_prefix = lake/paced
s3_region = {s3check.REGION}
s3_endpoint = {s3.endpoint}
s3_path_style = true
s3_requests_per_second = 40
""")
        start = len(s3.proxy.arrivals)
        rc, _, err = h.run_daemon(conf, "--once", "export", env=env)
        c.eq(rc, 0, "the paced upload exits 0")
        times = s3.proxy.arrivals[start:]
        n = len(times)
        span = times[-1] - times[0] if n > 1 else 0
        want = (n - 40) / 40 - SLACK_S
        c(n > 80 and span >= want,
          f"{n} requests at 40/s (burst 40) span {span:.2f}s >= {want:.2f}s")

        # kill -9 in the middle of the uploads (a new prefix: everything uploads again).
        s3conf("lake/v2")
        s3.proxy.stall_s = 0.2
        start = s3.proxy.puts
        p = h.start_daemon(conf, "--once", "export", env=env)
        try:
            h.wait_for(lambda: s3.proxy.puts >= start + 12, timeout=120, step=0.01,
                       what="uploads under way")
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
        s3.proxy.stall_s = 0
        lies = []
        for f in glob.glob(os.path.join(out, "*", "date=*", "_upload.json")):
            dd = os.path.dirname(f)
            t, d = dd.split(os.sep)[-2], dd.split("date=")[-1]
            up = json.load(open(f))
            if not up["destination"].endswith("lake/v2"):
                continue  # a day the killed run had not reached yet
            for name, rec in up["files"].items():
                st, data = s3.get(f"lake/v2/{t}/date={d}/{name}")
                if st != 200 or hashlib.sha256(data).hexdigest() != rec["sha256"]:
                    lies.append((t, d, name))
        c(not lies, f"after kill -9 every part marked uploaded is in the bucket: {lies[:3]}")
        bad = [b for b in [day_valid(x) for x in glob.glob(os.path.join(out, "*", "date=*"))] if b]
        c(not bad, f"the local files are intact after kill -9 during upload: {bad[:2]}")
        rc, _, err = h.run_daemon(conf, "--once", "export", env=env)
        c.eq(rc, 0, "the run after kill -9 during upload exits 0")
        bad = check_bucket("lake/v2")
        c(not bad, f"and the bucket is complete: {bad[:3]}")
        c.eq(s3.proxy.failures, [], "still every signature valid")
    finally:
        s3.close()
    db.drop()
    c.done()


if __name__ == "__main__":
    main()
