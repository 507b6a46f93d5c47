"""A second daemon on a spool_dir that a running daemon holds.

The first coingestd runs against the fake API and the private MariaDB. A second one started
with the same configuration (as --once, and as a daemon) must not touch the spool: it exits
with EX_TEMPFAIL (75), by itself rather than by a signal, after one error line that names the
spool_dir and the pid of the daemon holding it. The first daemon keeps running and stops
cleanly afterwards.
"""
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

EX_TEMPFAIL = 75


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-busy.")
    api = h.FakeAPI(work, "--universe", "50")
    db = h.Database(f"busy_{os.getpid()}")
    spool = os.path.join(work, "spool")
    conf = os.path.join(work, "busy.conf")
    h.write_config(conf, db, api.base_url, spool)
    first = h.start_daemon(conf, stderr_path=os.path.join(work, "first.log"))
    try:
        lock = os.path.join(spool, "spool.lock")

        def holds():
            try:
                return open(lock).read().strip() == str(first.pid)
            except OSError:
                return False
        h.wait_for(holds, 60, what="the first daemon to hold the spool")

        for args in (["--once", "assets"], []):
            what = " ".join(["coingestd"] + args)
            try:
                rc, _, err = h.run_daemon(conf, *args, timeout=60)
            except subprocess.TimeoutExpired:
                check(False, f"{what} on a busy spool_dir exits within 60 s")
                continue
            check(rc >= 0, f"{what} exits by itself, not by a signal (returncode {rc})")
            check.eq(rc, EX_TEMPFAIL, f"{what} exit code")
            errors = [ln for ln in err.splitlines() if "in use by another process" in ln]
            check.eq(len(errors), 1, f"{what} logs one 'in use by another process' line")
            line = errors[0] if errors else ""
            check(spool in line, f"the line names the spool_dir: {line!r}")
            check(str(first.pid) in line, f"the line names the holder's pid {first.pid}")
            check("AddressSanitizer" not in err and "runtime error" not in err,
                  f"{what}: no sanitizer report")
        check(first.poll() is None, "the first daemon is still running")
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)
        try:
            rc = first.wait(60)
        except subprocess.TimeoutExpired:
            first.kill()
            rc = first.wait()
        api.stop()
    check.eq(rc, 0, "the first daemon stops cleanly on SIGTERM")
    db.drop()
    check.done()


if __name__ == "__main__":
    main()
