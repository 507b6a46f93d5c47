/*
 * jrows: JSON response bodies -> typed rows in batches. The machinery every source's parsers
 * share; a source's parser keeps only its endpoints' shapes (which key is the id, which
 * object holds the rows, which times fall back to what).
 *
 * A parse is one `struct jrows` on the caller's stack, used in this order:
 *   1. jrows_begin: what the parse is called (for messages), where stored ids go, how the
 *      source's error bodies read, and the caller's error buffer.
 *   2. jrows_out, once per output batch: checks the batch's spec, looks up its columns BY
 *      NAME (fixed names, then one per entry of a field table) and notes the batch's row count
 *      for rollback. Nothing here depends on the order of a spec's columns.
 *   3. jrows_load (or jrows_array, which also walks an array body and finishes), then rows:
 *      jrows_add_row, jrows_put_fields for the columns a field table maps from JSON keys,
 *      jrows_put / batch_set_* for the others, jrows_keep_id for ids the caller wants back.
 *   4. jrows_finish with the parse's result code.
 *
 * Values, for every source:
 * - Numbers: jrows_load reads every number as the double nearest to its text (integers wider
 *   than 64 bits included). A number beyond the range of a double (1e400) does not fail the
 *   body: that token is read as null (NULL column) and counted in overflow_numbers; after
 *   JROWS_MAX_OVERFLOWS such numbers the body is refused.
 * - Strings are stored byte-exact after JSON unescaping (\u0000 included); empty stays empty.
 *   Ids must be usable (jrows_usable_id: a non-empty string without NUL bytes).
 * - A key that is absent gives a NULL column and counts in missing_fields; JSON null gives a
 *   NULL column and counts nowhere. A value of the wrong JSON type, or unusable (a rank that is
 *   not whole), gives a NULL column and counts in field_type_errors; a time string that does
 *   not parse, or a time outside 1970..9999, counts in bad_times. None of these fails a row.
 * - JSON text columns are written by jrows_dump: compact, keys in document order, numbers in
 *   the shortest form that reads back as the same double (whole numbers below 2^53 without a
 *   fraction), which is how APIs send them (jansson's own dump prints %.17g).
 *
 * All or nothing: when jrows_finish is given (or runs into) an error, every row added to the
 * batches registered with jrows_out since jrows_begin is dropped and the id list is not
 * touched, so the caller's outputs are exactly as before the parse. On success the ids kept
 * are appended to the caller's list in one step. `st` holds this parse's counts either way;
 * the caller adds them to its own totals only on success.
 *
 * Errors: -EBADMSG (body not JSON, or not the shape the endpoint needs; a message in err),
 * -EINVAL (bad arguments: a batch of the wrong spec, a column the spec lacks), -ENOMEM (also
 * when jansson reports its own allocation failure; some of those it reports as syntax errors,
 * which come back as -EBADMSG).
 *
 * Numbers are formatted and read in the C locale (the daemon never calls setlocale).
 * Thread: any; a parse touches only its arguments, so parsers may run on libuv's work queue.
 */
#ifndef COINGEST_JROWS_H
#define COINGEST_JROWS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/batch.h"
#include "coingest/sbuf.h"
#include "coingest/util.h" /* struct strlist */

/* How a JSON value becomes a column value, and what counts as a wrong type. */
enum jrows_kind {
    JROWS_NUM,      /* any number -> VAL_DBL */
    JROWS_UINT,     /* whole number in [0, 2^32) -> VAL_INT (INT UNSIGNED columns) */
    JROWS_STR,      /* string -> VAL_STR, byte-exact */
    JROWS_ISO_TIME, /* ISO-8601 UTC string -> VAL_TIME (util_parse_iso8601) */
    JROWS_JSON_OBJ, /* object -> VAL_JSON, written by jrows_dump */
    JROWS_NUMSTR,   /* a number, or a string holding exactly one JSON number ("67187.3358936566",
                       as CoinCap sends every number) -> VAL_DBL, the double nearest to its text */
    JROWS_UINTSTR   /* as JROWS_UINT, from a number or such a string ("1") */
};

/* A column filled straight from a JSON key. `key` may be a dotted path "a.b" into nested
 * objects; `col` is the column's name in the batch spec. */
struct jrows_field {
    const char *key;
    const char *col;
    enum jrows_kind kind;
};

#define JROWS_NFIELDS(table) (sizeof(table) / sizeof((table)[0]))

/* Output batches one parse may register. */
#define JROWS_MAX_OUT 4
/* Numbers beyond a double one body may hold before it is refused: each costs a re-parse. */
#define JROWS_MAX_OVERFLOWS 8

/* One parse's counts. */
struct jrows_stats {
    uint64_t items;             /* elements walked (jrows_array), or as the caller counts */
    uint64_t rows;              /* rows added with jrows_add_row, all batches together */
    uint64_t skipped;           /* elements skipped: no usable id */
    uint64_t field_type_errors; /* values of the wrong type or unusable, stored NULL */
    uint64_t bad_times;         /* time values that did not parse or are out of range */
    uint64_t missing_fields;    /* field-table keys (or jrows_put values) absent, stored NULL */
    uint64_t overflow_numbers;  /* numbers beyond the range of a double, stored NULL */
};

/* What a source's error or notice body says ({"error":"..."} and the like), or NULL when
 * `root` (an object) is not one. Lets messages quote the API. */
typedef const char *(*jrows_message_fn)(const json_t *root);

/* A parse in progress. Callers read and add to `st`; the other fields are private. */
struct jrows {
    struct jrows_stats st;
    const char *what;
    jrows_message_fn message;
    char *err;
    size_t errlen;
    bool err_set;
    int nout;
    struct batch *out[JROWS_MAX_OUT];
    uint32_t mark[JROWS_MAX_OUT];
    struct strlist *idlist;
    char **ids; /* kept ids (copies), moved to idlist by jrows_finish */
    size_t nids, capids;
    struct sbuf sb; /* scratch for JSON text columns */
};

/* Starts a parse. `what` names it in messages ("coingecko /coins/list"); `ids` (may be NULL)
 * receives the ids kept with jrows_keep_id, as malloc'd copies, on success; `message` (may be
 * NULL) reads the source's error bodies; `err` (may be NULL) gets a message on errors. Cannot
 * fail; every path after it must end in jrows_finish. */
void jrows_begin(struct jrows *j, const char *what, struct strlist *ids, jrows_message_fn message,
                 char *err, size_t errlen);

/* Registers an output batch `b`, which must be of spec `id`, and resolves its columns:
 * cols[0..nfixed) for the names in `fixed`, then cols[nfixed + i] for fields[i].col.
 * 0, or -EINVAL (b NULL, of another spec, lacking a column, or more than JROWS_MAX_OUT
 * outputs). */
int jrows_out(struct jrows *j, struct batch *b, enum batch_spec_id id, const char *const *fixed,
              size_t nfixed, const struct jrows_field *fields, size_t nfields, uint16_t *cols);

/* The memory a parse may allocate: JROWS_MEM_FACTOR bytes per byte of body plus
 * JROWS_MEM_SLACK. Real bodies take 3-10 per byte; `[{},{},...]` takes 72. */
#define JROWS_MEM_FACTOR 16u
#define JROWS_MEM_SLACK  (4u << 20)
size_t jrows_mem_budget(size_t len);

/* Whether jrows_array parses each element of an array body into an arena that is reset once
 * the element is walked (default true: it takes malloc and free out of the parse). Tests
 * turn it off, before any parse, so that every allocation jansson makes is a malloc that
 * can be made to fail. */
void jrows_element_arena(bool on);

/* Parses a whole body into *root (the caller json_decref's it). Counts overflow_numbers.
 * 0, -EBADMSG (not JSON; message set), -E2BIG (its parse would allocate more than
 * jrows_mem_budget(len); message set: the body is refused, not retried) or -ENOMEM. */
int jrows_load(struct jrows *j, const char *body, size_t len, json_t **root);

/* Calls `elem` for each element of an array. */
typedef int (*jrows_elem_cb)(struct jrows *j, const json_t *elem, const json_t *id, void *arg);

/*
 * The walk of an endpoint whose body is an array: loads the body, insists on an array
 * (-EBADMSG otherwise, the message naming `expected`, e.g. "an array of coins"), and for each
 * element counts `items` and calls `elem`. With `id_key`, an element whose id under that key
 * is not usable (or that is not an object) is counted in `skipped` instead and `elem` gets
 * the id; without it (NULL; arrays of arrays such as candles) every element is passed, id
 * NULL. The first non-zero return of `elem` stops the walk. Then finishes the parse
 * (jrows_finish) and returns its result; *nitems (may be NULL) gets the array's length on
 * success.
 */
int jrows_array(struct jrows *j, const char *body, size_t len, const char *expected,
                const char *id_key, jrows_elem_cb elem, void *arg, size_t *nitems);

/* Appends a row of NULLs to `b` (registered with jrows_out) and counts it. The row's index,
 * or -ENOMEM. */
int jrows_add_row(struct jrows *j, struct batch *b);

/* Sets (row, col) of `b` from JSON value `v` by `kind` (see the contract above; v NULL means
 * the key was absent). 0 or -ENOMEM; wrong types are counted, not returned. */
int jrows_put(struct jrows *j, struct batch *b, uint32_t row, uint16_t col, enum jrows_kind kind,
              const json_t *v);

/* jrows_put for each fields[i], from key fields[i].key of `obj` into column cols[i]
 * (as jrows_out resolved them). 0 or -ENOMEM. */
int jrows_put_fields(struct jrows *j, struct batch *b, uint32_t row, const json_t *obj,
                     const struct jrows_field *fields, const uint16_t *cols, size_t n);

/* Keeps the id string `id` (in the document) for the caller's id list; copied out only by a
 * successful jrows_finish. A no-op without an id list. 0 or -ENOMEM. */
int jrows_keep_id(struct jrows *j, const json_t *id);

/* The value of a number, or of a string holding exactly one JSON number (JROWS_NUMSTR), as the
 * double nearest to its text. 0, or -EINVAL for anything else (counts nothing). */
int jrows_number(const json_t *v, double *d);

/* A non-empty string without NUL bytes. */
bool jrows_usable_id(const json_t *v);

/* An ISO-8601 UTC string (`v` must be a string) -> ms since the epoch, within 1970..9999.
 * 0 or -EINVAL. Counts nothing. */
int jrows_iso_time(const json_t *v, int64_t *ms);

/* Unix seconds (maybe fractional; rounded to ms) -> ms since the epoch. 0; 1 when v is NULL or
 * JSON null; -EINVAL when not a number (counted in field_type_errors) or outside 1970..9999
 * (counted in bad_times). */
int jrows_unix_time(struct jrows *j, const json_t *v, int64_t *ms);

/* The source's message when `root` is an object that is one of its error bodies, else NULL. */
const char *jrows_api_message(const struct jrows *j, const json_t *root);

/* Sets the parse's error message, "WHAT: " followed by the formatted text. The first message
 * of a parse wins over the generic ones jrows_finish would set. */
void jrows_error(struct jrows *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Sets the message for a body of the wrong shape: what was expected, what came (and what the
 * API said, when `got` is one of its error bodies). */
void jrows_shape_error(struct jrows *j, const char *expected, const json_t *got);

/* "an object", "an array", "a string", "a number", "a boolean" or "null". */
const char *jrows_type_name(const json_t *v);

/* Ends a parse. With rc 0 it copies the kept ids into the caller's list; if that fails, or
 * rc was an error, every row added since jrows_begin is dropped (and for -ENOMEM/-EINVAL a
 * message is set unless one was). Frees the parse's scratch; `st` stays readable. Returns
 * the final result: 0, or the error. */
int jrows_finish(struct jrows *j, int rc);

/* Appends `v` as compact JSON text (see the contract above) to `sb`. 0 or -ENOMEM. */
int jrows_dump(struct sbuf *sb, const json_t *v);

#endif
