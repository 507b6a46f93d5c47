/*
 * source: the registry of the remote APIs the daemon knows (see source.h). The list itself is
 * src/sources/list.h, one SOURCE(name) line per source; this file turns it into an array.
 */
#include "coingest/source.h"

#include <errno.h>
#include <string.h>

#include "coingest/log.h"
#include "coingest/runner.h"
#include "coingest/util.h"

#define SOURCE(name) extern const struct source_def name##_source;
#include "sources/list.h"
#undef SOURCE

const struct source_def *const source_defs[] = {
#define SOURCE(name) &name##_source,
#include "sources/list.h"
#undef SOURCE
    NULL,
};

const size_t source_count = ARRAY_SIZE(source_defs) - 1;

const struct source_def *source_find(const char *name)
{
    for (size_t i = 0; name && i < source_count; i++)
        if (strcmp(source_defs[i]->name, name) == 0)
            return source_defs[i];
    return NULL;
}

int source_plan_index(const struct source_def *def, const char *name)
{
    for (size_t i = 0; def && name && i < def->nplans; i++)
        if (strcmp(def->plans[i].name, name) == 0)
            return (int)i;
    return -1;
}

int source_register_log_masks(void)
{
    for (size_t i = 0; i < source_count; i++) {
        const char *const *p = source_defs[i]->secret_params;
        for (; p && *p; p++)
            if (log_add_secret_param(*p) != 0)
                return -ENOMEM;
    }
    return 0;
}
