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
#include "coingest/log.h"
#include "coingest/runner.h"
#include "coingest/source.h"
#include "coingest/version.h"

/* Bad usage exits 2, as getopt-based tools and most daemons do (EX_USAGE is 64). */
#define EXIT_BAD_USAGE 2

/* "assets, prices, market_caps": every registered job. */
static const char *job_names(void)
{
    static char names[512];
    size_t n = 0;
    names[0] = '\0';
    for (size_t i = 0; i < source_count; i++) {
        for (size_t j = 0; j < source_defs[i]->njobs && n < sizeof(names); j++) {
            int w = snprintf(names + n, sizeof(names) - n, "%s%s", n ? ", " : "",
                             source_defs[i]->jobs[j]->name);
            n += w > 0 ? (size_t)w : 0;
        }
    }
    return names;
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: coingestd [-c FILE] [--check-config] [--once JOB[,JOB...]] [--migrate]\n"
            "                 [--version] [-h|--help]\n"
            "\n"
            "Keeps a MySQL/MariaDB database filled with crypto market data.\n"
            "\n"
            "  -c, --config FILE   configuration file (default %s)\n"
            "      --check-config  validate the configuration, print it (secrets masked) and\n"
            "                      the request budget it implies; exit 0, or 78 on error\n"
            "      --once JOBS     run these jobs once, in the order given (%s;\n"
            "                      'all' for every job of every enabled source), wait until\n"
            "                      their rows are committed, print a summary line per job, and\n"
            "                      exit\n"
            "      --migrate       apply pending schema migrations and exit\n"
            "      --version       print the version and exit\n"
            "  -h, --help          this text\n"
            "\n"
            "Signals: HUP reloads the configuration, TERM/INT stop gracefully, USR1 logs stats.\n",
            COINGEST_DEFAULT_CONF, job_names());
}

/* Parses "assets,prices" into the run order (indices into cfg->jobs, each job once; `all`
 * adds every job of every enabled source); returns 0 or -EINVAL with a message printed. */
static int parse_once(const char *arg, const struct config *cfg, size_t *order, int *count)
{
    char *copy = strdup(arg);
    bool *chosen = calloc(cfg->njobs + 1, sizeof(*chosen));
    if (!copy || !chosen) {
        free(copy);
        free(chosen);
        return -ENOMEM;
    }
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        bool all = strcmp(tok, "all") == 0;
        int id = all ? 0 : config_job_index(cfg, tok);
        if (id < 0) {
            fprintf(stderr, "coingestd: --once: unknown job \"%s\" (%s)\n", tok, job_names());
            rc = -EINVAL;
            break;
        }
        if (!all && !config_job_source(cfg, &cfg->jobs[id])->enabled) {
            fprintf(stderr,
                    "coingestd: --once: job \"%s\" belongs to [source.%s], which is not "
                    "enabled\n",
                    tok, config_job_source(cfg, &cfg->jobs[id])->name);
            rc = -EINVAL;
            break;
        }
        for (size_t i = all ? 0 : (size_t)id; i < (all ? cfg->njobs : (size_t)id + 1); i++) {
            if (chosen[i] || !config_job_source(cfg, &cfg->jobs[i])->enabled)
                continue;
            chosen[i] = true;
            order[(*count)++] = i;
        }
    }
    free(copy);
    free(chosen);
    if (rc == 0 && *count == 0) {
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
    MYSQL *conn = db_connect(&cfg->database, err, sizeof(err));
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
    const char *once = NULL;
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
            once = optarg;
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
    if (source_register_log_masks() != 0) {
        fprintf(stderr, "coingestd: out of memory\n");
        return EX_OSERR;
    }

    char err[2048];
    struct config *cfg = NULL;
    if (config_load(path, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "coingestd: %s\n", err);
        return EX_CONFIG;
    }
    log_setup(cfg->daemon.log_level, cfg->daemon.log_format);
    log_add_secret(cfg->database.password);
    for (size_t i = 0; i < cfg->nsources; i++)
        log_add_secret(cfg->sources[i].api_key);

    size_t order[64];
    if (once) {
        if (cfg->njobs > sizeof(order) / sizeof(order[0]) ||
            parse_once(once, cfg, order, &opts.once_count)) {
            config_free(cfg);
            return EXIT_BAD_USAGE;
        }
        opts.once_order = order;
    }

    if (check) {
        printf("# %s: configuration is valid\n", path);
        config_dump(cfg, stdout);
        printf("\n");
        runner_print_budget(cfg, 0, stdout);
        /* Not an error: a server that authenticates local users by their unix socket
         * credentials (MariaDB's unix_socket plugin, the default for root) needs none. */
        if (!cfg->database.password || !*cfg->database.password)
            printf("warning: [database] password is not set (password, password_file or "
                   "COINGEST_DB_PASSWORD[_FILE]); only unix_socket authentication will work\n");
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
