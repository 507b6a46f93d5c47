/*
 * coingestd: the command line. Parses the options, loads the configuration and hands over to
 * daemon_run(); --check-config and --migrate are answered here without starting the loop.
 *
 *   coingestd [-c FILE] [--check-config] [--once JOB[,JOB...]] [--migrate] [--version] [-h]
 *
 * Exit codes: 0 success; 1 a --once job failed or rows were not committed in time; 2 bad
 * usage (EX_USAGE is 64, but getopt tradition and most daemons use 2); 78 (EX_CONFIG) bad
 * configuration; 69 (EX_UNAVAILABLE) --migrate could not reach the database; 70/71 startup
 * failures; 75 (EX_TEMPFAIL) spool_dir held by another process. docs/operations.md lists them.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include "coingest/config.h"
#include "coingest/daemon.h"
#include "coingest/db.h"
#include "coingest/jobs.h"
#include "coingest/log.h"
#include "coingest/version.h"

/* Bad usage exits 2, as getopt-based tools and most daemons do (EX_USAGE is 64). */
#define EXIT_BAD_USAGE 2

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: coingestd [-c FILE] [--check-config] [--once JOB[,JOB...]] [--migrate]\n"
            "                 [--version] [-h|--help]\n"
            "\n"
            "Keeps a MySQL/MariaDB database filled with crypto market data from CoinGecko.\n"
            "\n"
            "  -c, --config FILE   configuration file (default %s)\n"
            "      --check-config  validate the configuration, print it (secrets masked) and\n"
            "                      the request budget it implies; exit 0, or 78 on error\n"
            "      --once JOBS     run these jobs once, in the order given (assets, prices,\n"
            "                      market_caps; 'all' for all three), wait until their rows are\n"
            "                      committed, print a summary line per job, and exit\n"
            "      --migrate       apply pending schema migrations and exit\n"
            "      --version       print the version and exit\n"
            "  -h, --help          this text\n"
            "\n"
            "Signals: HUP reloads the configuration, TERM/INT stop gracefully, USR1 logs stats.\n",
            COINGEST_DEFAULT_CONF);
}

/* Parses "assets,prices" into opts; returns 0 or -EINVAL with a message printed. */
static int parse_once(const char *arg, struct daemon_opts *o, enum job_id *order)
{
    char *copy = strdup(arg);
    if (!copy)
        return -ENOMEM;
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (strcmp(tok, "all") == 0) {
            for (int i = 0; i < JOB_COUNT; i++) {
                if (!o->once_jobs[i]) {
                    o->once_jobs[i] = true;
                    order[o->once_count++] = (enum job_id)i;
                }
            }
            continue;
        }
        int id = config_job_index(tok);
        if (id < 0) {
            fprintf(stderr, "coingestd: --once: unknown job \"%s\" (assets, prices, market_caps)\n",
                    tok);
            rc = -EINVAL;
            break;
        }
        if (!o->once_jobs[id]) {
            o->once_jobs[id] = true;
            order[o->once_count++] = (enum job_id)id;
        }
    }
    free(copy);
    if (rc == 0 && o->once_count == 0) {
        fprintf(stderr, "coingestd: --once needs at least one job\n");
        rc = -EINVAL;
    }
    return rc;
}

static int run_migrate(const struct config *cfg)
{
    char err[1024];
    if (db_library_init() != 0) {
        fprintf(stderr, "coingestd: cannot initialise the MySQL client library\n");
        return EX_OSERR;
    }
    MYSQL *conn = db_connect(cfg, err, sizeof(err));
    if (!conn) {
        log_error("cannot reach the database", LOG_S("error", err));
        db_library_end();
        return EX_UNAVAILABLE;
    }
    /* The same list the writers apply at startup: built-in, or migrations_dir's files. */
    const char *dir = cfg->database.migrations_dir;
    int n = db_migrate(conn, dir, err, sizeof(err));
    mysql_close(conn);
    db_library_end();
    if (n < 0) {
        log_error("migration failed", LOG_S("dir", db_migrations_source(dir)), LOG_S("error", err));
        return 1;
    }
    log_info("schema is current", LOG_I("applied", n), LOG_S("dir", db_migrations_source(dir)));
    return 0;
}

int main(int argc, char **argv)
{
    daemon_block_signals();

    static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                             {"check-config", no_argument, NULL, 'k'},
                                             {"once", required_argument, NULL, 'o'},
                                             {"migrate", no_argument, NULL, 'm'},
                                             {"version", no_argument, NULL, 'V'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *path = COINGEST_DEFAULT_CONF;
    bool check = false, migrate = false;
    struct daemon_opts opts = {0};
    enum job_id order[JOB_COUNT];
    int c;
    while ((c = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'k':
            check = true;
            break;
        case 'o':
            opts.once = true;
            if (parse_once(optarg, &opts, order))
                return EXIT_BAD_USAGE;
            break;
        case 'm':
            migrate = true;
            break;
        case 'V':
            printf("coingestd %s\n", COINGEST_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return EXIT_BAD_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "coingestd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return EXIT_BAD_USAGE;
    }
    opts.config_path = path;
    opts.once_order = order;

    char err[2048];
    struct config *cfg = NULL;
    if (config_load(path, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "coingestd: %s\n", err);
        return EX_CONFIG;
    }
    log_setup(cfg->daemon.log_level, cfg->daemon.log_format);
    if (cfg->database.password)
        log_add_secret(cfg->database.password);
    if (cfg->coingecko.api_key)
        log_add_secret(cfg->coingecko.api_key);

    if (check) {
        printf("# %s: configuration is valid\n", path);
        config_dump(cfg, stdout);
        printf("\n");
        jobs_print_budget(cfg, 0, stdout);
        config_free(cfg);
        return 0;
    }
    if (migrate) {
        int rc = run_migrate(cfg);
        config_free(cfg);
        return rc;
    }
    return daemon_run(cfg, &opts);
}
