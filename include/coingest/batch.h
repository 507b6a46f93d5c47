/*
 * batch: rows on their way to the database, as typed values, plus the table specs that say
 * which columns a batch fills and how a row that already exists is updated.
 *
 * A batch belongs to one spec (e.g. BATCH_MARKET_SNAPSHOTS). It holds nrows x ncols values;
 * strings are copied into an arena owned by the batch, so a parser can build a batch from a
 * JSON document and then free the document. Batches are built on the loop thread, handed to
 * the sink (which takes ownership), written by a writer thread or serialized into the spool.
 * A batch is only ever touched by one thread at a time.
 *
 * Values: NULL, signed integer, double (NaN and +-Inf are stored as NULL), string (UTF-8,
 * any bytes, length-counted), time (ms since the epoch, UTC, written as DATETIME(3)) and JSON
 * (a string that the writer sends as JSON text).
 *
 * Specs of kind BATCH_KIND_UPSERT become multi-row INSERT ... ON DUPLICATE KEY UPDATE on the
 * table's primary key, so writing the same rows again changes nothing. Specs of kind
 * BATCH_KIND_STATEMENT run a fixed statement once per row with the row's values as
 * parameters; the sink runs such a batch only after every batch submitted before it has
 * committed (it is a barrier), e.g. marking delisted assets after the asset list is stored.
 */
#ifndef COINGEST_BATCH_H
#define COINGEST_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum val_type { VAL_NULL = 0, VAL_INT = 1, VAL_DBL = 2, VAL_STR = 3, VAL_TIME = 4, VAL_JSON = 5 };

struct val {
    uint8_t type; /* enum val_type */
    uint32_t len; /* VAL_STR, VAL_JSON: bytes */
    union {
        int64_t i;     /* VAL_INT; VAL_TIME: ms since the epoch */
        double d;      /* VAL_DBL, always finite */
        const char *s; /* VAL_STR, VAL_JSON: points into the batch's arena, not NUL-terminated */
    } u;
};

/* Spec ids are stored in the spool: append new ones at the end, never renumber. */
enum batch_spec_id {
    BATCH_ASSETS_LIST = 0,   /* /coins/list: id, symbol, name, platforms, listed_at */
    BATCH_ASSETS_MARKET = 1, /* /coins/markets: id, symbol, name, market_cap_rank, image_url */
    BATCH_PRICES = 2,
    BATCH_MARKET_SNAPSHOTS = 3,
    BATCH_GLOBAL_SNAPSHOTS = 4,
    BATCH_CATEGORIES = 5,
    BATCH_ASSET_CATEGORIES = 6,
    BATCH_JOB_RUNS = 7,
    BATCH_ASSETS_DELIST = 8, /* statement: (listed_before, now) marks assets not listed since */
    BATCH_SPEC_COUNT
};

enum batch_kind { BATCH_KIND_UPSERT = 0, BATCH_KIND_STATEMENT = 1 };

struct batch_spec {
    enum batch_spec_id id;
    const char *name;  /* for logs and metrics, e.g. "market_snapshots" */
    const char *table; /* SQL table */
    enum batch_kind kind;
    const char *const *cols; /* column names, in value order */
    uint16_t ncols;
    /* UPSERT: the text after ON DUPLICATE KEY UPDATE. STATEMENT: the statement with one `?`
     * per column, in order. */
    const char *sql;
};

/* The spec for an id; NULL when out of range. Thread: any (the table is static). */
const struct batch_spec *batch_spec(enum batch_spec_id id);

/* Index of a column of a spec by name, or -1. */
int batch_spec_col(const struct batch_spec *spec, const char *col);

struct batch_arena_chunk;

struct batch {
    const struct batch_spec *spec;
    uint32_t nrows;
    uint32_t cap;     /* rows allocated */
    struct val *vals; /* nrows * spec->ncols */
    size_t bytes;     /* an upper bound on the SQL text these rows need */
    struct batch_arena_chunk *arena;
    struct batch *next; /* free for the owner's queues */
};

/* A new empty batch for a spec, with room for `cap_hint` rows (it grows). NULL on OOM. */
struct batch *batch_new(enum batch_spec_id id, uint32_t cap_hint);

/* Frees a batch and its strings; NULL is a no-op. */
void batch_free(struct batch *b);

/* Appends a row of NULLs and returns its index, or -ENOMEM. */
int batch_add_row(struct batch *b);

/* Removes the last row (a parser that gives up on a row halfway). */
void batch_drop_last(struct batch *b);

/* Setters for row `row` (< nrows), column `col` (< spec->ncols; look it up by name with
 * batch_spec_col, never by a bare number). A row starts out all NULL. */

/* Stores NULL. Cannot fail. */
void batch_set_null(struct batch *b, uint32_t row, uint16_t col);
/* Stores a VAL_INT. Cannot fail. */
void batch_set_int(struct batch *b, uint32_t row, uint16_t col, int64_t v);
/* Stores a VAL_DBL and returns 0; NaN and +-Inf are stored as NULL and return 1 (so parsers
 * can count them). Cannot fail otherwise. */
int batch_set_dbl(struct batch *b, uint32_t row, uint16_t col, double v);
/* Stores a VAL_TIME (ms since the epoch). Cannot fail. */
void batch_set_time(struct batch *b, uint32_t row, uint16_t col, int64_t wall_ms);
/* Copies s[0..len) into the batch's arena as a VAL_STR / VAL_JSON value. 0, -ENOMEM or
 * -EINVAL (len above UINT32_MAX); on error the cell keeps its previous value. */
int batch_set_str(struct batch *b, uint32_t row, uint16_t col, const char *s, size_t len);
int batch_set_json(struct batch *b, uint32_t row, uint16_t col, const char *s, size_t len);

/* The value at (row, col). */
static inline const struct val *batch_val(const struct batch *b, uint32_t row, uint16_t col)
{
    return &b->vals[(size_t)row * b->spec->ncols + col];
}

/* Appends every row of `src` to `dst` (same spec), copying strings. 0 or -ENOMEM/-EINVAL. */
int batch_append(struct batch *dst, const struct batch *src);

/* Moves rows [from, nrows) of `b` into a new batch (for splitting oversized batches).
 * NULL on OOM, in which case b is unchanged. */
struct batch *batch_split_tail(struct batch *b, uint32_t from);

/* Serialization for the spool: a self-contained byte string (spec id, rows, values).
 * batch_encode returns a malloc'd buffer and its length in *len, or NULL on OOM.
 * batch_decode returns a new batch or NULL if the bytes are not a valid encoding. */
unsigned char *batch_encode(const struct batch *b, size_t *len);
struct batch *batch_decode(const unsigned char *buf, size_t len);

#endif
