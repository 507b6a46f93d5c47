"""Migrations compiled into the binary: the daemon from the build tree with no migrations_dir.

- `coingestd --migrate` with no migrations_dir migrates a fresh database from the built-in
  list: schema_migrations holds every sql/*.sql by name, with the SHA-256 of the file.
- `coingestd --once assets` with no migrations_dir (the first thing someone who built from
  source runs) migrates a fresh database at startup and writes the assets.
- migrations_dir stays an override: pointing it at sql/ finds nothing pending (same checksums),
  pointing it at a missing directory fails --migrate and names that directory.
"""
import hashlib
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402


def config(path, db, api, spool, migrations_dir=None):
    h.write_config(path, db, api.base_url, spool)
    text = open(path).read()
    text, n = re.subn(r"(?m)^migrations_dir = .*\n", "", text)
    assert n == 1, "harness config without a migrations_dir line"
    if migrations_dir is not None:
        text = text.replace("[database]\n", f"[database]\nmigrations_dir = {migrations_dir}\n")
    open(path, "w").write(text)


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-migrations.")
    sql_dir = os.path.join(os.environ["COINGEST_SOURCE_DIR"], "sql")
    files = sorted(f for f in os.listdir(sql_dir) if f.endswith(".sql"))
    sums = {f: hashlib.sha256(open(os.path.join(sql_dir, f), "rb").read()).hexdigest()
            for f in files}
    api = h.FakeAPI(work, "--universe", "30")
    pid = os.getpid()
    db1 = h.Database(f"mig_builtin_{pid}")
    db2 = h.Database(f"mig_once_{pid}")
    try:
        conf1 = os.path.join(work, "one.conf")
        config(conf1, db1, api, os.path.join(work, "spool1"))
        rc, _, err = h.run_daemon(conf1, "--migrate", timeout=120)
        check.eq(rc, 0, "--migrate with no migrations_dir")
        check(f"applied={len(files)}" in err and "dir=built-in" in err,
              f"--migrate reports {len(files)} built-in migration(s) applied: {err.strip()[-300:]}")
        rows = db1.sql("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        got = {f"{int(v):03d}_{n}.sql": c for v, n, c in rows}
        check.eq(sorted(got), files, "schema_migrations names every sql/*.sql")
        check(all(got.get(f) == sums[f] for f in files),
              "each checksum is the SHA-256 of the file in sql/")

        # The override: the same files from disk are already applied (same checksums).
        conf_files = os.path.join(work, "files.conf")
        config(conf_files, db1, api, os.path.join(work, "spool1"), migrations_dir=sql_dir)
        rc, _, err = h.run_daemon(conf_files, "--migrate", timeout=120)
        check.eq(rc, 0, "--migrate with migrations_dir = sql/ after the built-in ones")
        check("applied=0" in err, "nothing is pending for the files")
        missing = os.path.join(work, "no-such-sql")
        conf_missing = os.path.join(work, "missing.conf")
        config(conf_missing, db1, api, os.path.join(work, "spool1"), migrations_dir=missing)
        rc, _, err = h.run_daemon(conf_missing, "--migrate", timeout=120)
        check.eq(rc, 1, "--migrate with a missing migrations_dir fails")
        check(missing in err, "the error names the migrations_dir that was set")

        # The daemon itself, from the build tree, on a fresh database.
        conf2 = os.path.join(work, "once.conf")
        config(conf2, db2, api, os.path.join(work, "spool2"))
        rc, out, err = h.run_daemon(conf2, "--once", "assets", timeout=300)
        check.eq(rc, 0, "--once assets with no migrations_dir on a fresh database")
        check("No such file or directory" not in err, "no migrations directory is looked for")
        check.eq(db2.count("schema_migrations"), len(files), "startup applied the migrations")
        check(db2.count("assets") > 0, "the assets are written")
        if rc != 0:
            print(out, err)
    finally:
        api.stop()
        db1.drop()
        db2.drop()
    check.done()


if __name__ == "__main__":
    main()
