/*
 * fuzz_config: libFuzzer target for the configuration loader. config_load() takes a path, so
 * each input is written to a memfd and loaded through /proc/self/fd/N (no temp files, nothing
 * left behind). The environment's COINGEST_* variables are cleared first so runs repeat.
 *
 * Checks beyond the sanitizers': a failed load returns a negative errno with a message and no
 * config; a loaded config dumps without trouble and differs from itself in nothing.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "coingest/config.h"

extern char **environ;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int conf_fd = -1;
static char conf_path[64];
static FILE *devnull;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz check failed: %s: ", #cond);                                     \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Unset every COINGEST_* variable (restart the scan after each removal). */
    for (bool again = true; again;) {
        again = false;
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "COINGEST_", 9) == 0) {
                char name[256];
                size_t n = strcspn(*e, "=");
                snprintf(name, sizeof(name), "%.*s", (int)n, *e);
                unsetenv(name);
                again = true;
                break;
            }
        }
    }
    conf_fd = memfd_create("coingest-fuzz.conf", MFD_CLOEXEC);
    CHECK(conf_fd >= 0, "memfd_create: %s", strerror(errno));
    snprintf(conf_path, sizeof(conf_path), "/proc/self/fd/%d", conf_fd);
    devnull = fopen("/dev/null", "w");
    CHECK(devnull, "/dev/null: %s", strerror(errno));
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    CHECK(ftruncate(conf_fd, 0) == 0, "ftruncate: %s", strerror(errno));
    CHECK(pwrite(conf_fd, data, size, 0) == (ssize_t)size, "pwrite: %s", strerror(errno));

    struct config *cfg = NULL;
    char err[1024] = "";
    int rc = config_load(conf_path, &cfg, err, sizeof(err));
    if (rc != 0) {
        CHECK(rc < 0, "config_load returned %d", rc);
        CHECK(err[0], "config_load failed (%d) without a message", rc);
        CHECK(!cfg, "config_load failed but returned a config");
        return 0;
    }
    CHECK(cfg, "config_load succeeded without a config");
    config_dump(cfg, devnull);
    struct config_diff d;
    config_diff(cfg, cfg, &d);
    const unsigned char *p = (const unsigned char *)&d;
    bool any = false;
    for (size_t i = 0; i < sizeof(d); i++)
        any |= p[i] != 0;
    CHECK(!any, "a config differs from itself");
    config_free(cfg);
    return 0;
}
