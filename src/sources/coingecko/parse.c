/*
 * coingecko: CoinGecko response bodies -> typed rows (see coingecko.h for the contract and
 * docs/parsing.md for the field-to-column maps).
 *
 * How it works. A body is parsed whole by jansson with JSON_DECODE_INT_AS_REAL, so every
 * number becomes the double nearest to its text (strtod), uint256-sized integers included,
 * and with JSON_ALLOW_NUL, so a \u0000 inside a name does not fail a page. jansson rejects a
 * number beyond the range of a double ("real number overflow"); rather than lose the page we
 * overwrite that one token with `null` plus spaces (same length, so positions hold) in a copy
 * and parse again, a few times at most, counting each one.
 *
 * Each endpoint then walks its document once. The columns that come straight from a JSON key
 * are described by a table of struct field (key, column, kind); the kind decides how a JSON
 * value becomes a column value and what counts as a wrong type. Column indexes are looked up
 * by name in the batch spec once per call, so nothing here depends on column order.
 *
 * All or nothing: before touching the output the parse notes each batch's row count; on any
 * error it drops the rows it added. Ids for the caller's lists are collected as pointers into
 * the document and copied out only after every row is in, and the stats are added last.
 *
 * JSON columns (platforms, roi, the /global maps) are written by a small serializer of our
 * own rather than json_dumps: jansson prints doubles with %.17g (0.1 -> 0.10000000000000001,
 * 1 -> 1.0), while we print the shortest text that reads back as the same double, and whole
 * numbers below 2^53 without a fraction, which is how the API sent them. Number formatting
 * relies on the C locale (the daemon never calls setlocale).
 */
#include "sources/coingecko/coingecko.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/sbuf.h"
#include "coingest/util.h"

#define LOAD_FLAGS (JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL)

/* Numbers beyond a double that one body may hold before we give up on it: each costs a
 * re-parse of the whole body. */
#define MAX_OVERFLOWS 8

/* Times must fit DATETIME(3): from the epoch to the end of year 9999. */
#define MAX_WALL_MS 253402300800000LL

/* vs currencies fit prices.vs_currency VARCHAR(32). */
#define MAX_VS_LEN 32

/* --- errors ------------------------------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* --- compact JSON serializer -------------------------------------------------------------- */

static int dump_string(struct sbuf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    int rc = sbuf_putc(b, '"');
    size_t run = 0; /* start of the bytes not yet copied */
    for (size_t i = 0; i < len && !rc; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        rc = sbuf_append(b, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0};
        size_t n = 2;
        switch (c) {
        case '"':
        case '\\':
            esc[1] = (char)c;
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        if (!rc)
            rc = sbuf_append(b, esc, n);
    }
    if (!rc)
        rc = sbuf_append(b, s + run, len - run);
    if (!rc)
        rc = sbuf_putc(b, '"');
    return rc;
}

/* The shortest of %.15g..%.17g that reads back as d; whole numbers below 2^53 as integers. */
static int dump_number(struct sbuf *b, double d)
{
    char tmp[40];
    if (!isfinite(d))
        return sbuf_append(b, "null", 4);
    if (d == floor(d) && fabs(d) < 9007199254740992.0) {
        snprintf(tmp, sizeof(tmp), "%.0f", d);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
            if (strtod(tmp, NULL) == d)
                break;
        }
    }
    return sbuf_append(b, tmp, strlen(tmp));
}

/* Recursion depth is bounded by jansson's own parse depth limit. */
static int dump_value(struct sbuf *b, const json_t *v)
{
    int rc = 0;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        json_t *obj = (json_t *)v; /* jansson's iterators take non-const objects */
        rc = sbuf_putc(b, '{');
        for (void *it = json_object_iter(obj); it && !rc; it = json_object_iter_next(obj, it)) {
            const char *key = json_object_iter_key(it);
            if (it != json_object_iter(obj))
                rc = sbuf_putc(b, ',');
            if (!rc)
                rc = dump_string(b, key, strlen(key));
            if (!rc)
                rc = sbuf_putc(b, ':');
            if (!rc)
                rc = dump_value(b, json_object_iter_value(it));
        }
        return rc ? rc : sbuf_putc(b, '}');
    }
    case JSON_ARRAY: {
        rc = sbuf_putc(b, '[');
        for (size_t i = 0; i < json_array_size(v) && !rc; i++) {
            if (i)
                rc = sbuf_putc(b, ',');
            if (!rc)
                rc = dump_value(b, json_array_get(v, i));
        }
        return rc ? rc : sbuf_putc(b, ']');
    }
    case JSON_STRING:
        return dump_string(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
    case JSON_REAL:
        return dump_number(b, json_number_value(v));
    case JSON_TRUE:
        return sbuf_append(b, "true", 4);
    case JSON_FALSE:
        return sbuf_append(b, "false", 5);
    case JSON_NULL:
    default:
        return sbuf_append(b, "null", 4);
    }
}

/* --- loading ------------------------------------------------------------------------------ */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Is s[0..n) exactly one JSON number token? */
static bool is_json_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (i < n && s[i] == '0') {
        i++;
    } else if (i < n && is_digit(s[i])) {
        while (i < n && is_digit(s[i]))
            i++;
    } else {
        return false;
    }
    if (i < n && s[i] == '.') {
        i++;
        if (i == n || !is_digit(s[i]))
            return false;
        while (i < n && is_digit(s[i]))
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i == n || !is_digit(s[i]))
            return false;
        while (i < n && is_digit(s[i]))
            i++;
    }
    return i == n;
}

/* What may precede a value in a valid document. */
static bool is_separator(char c)
{
    return c == '[' || c == ',' || c == ':' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_number_char(char c)
{
    return is_digit(c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* jansson reports a number overflow with `position` just past the token. Replaces that token
 * in buf with `null` and spaces; false when the position does not end a number token that a
 * valid document could hold (then the body is bad anyway). */
static bool blank_overflow(char *buf, size_t len, int position)
{
    if (position <= 0 || (size_t)position > len)
        return false;
    size_t end = (size_t)position, start = end;
    while (start > 0 && is_number_char(buf[start - 1]))
        start--;
    if (start > 0 && !is_separator(buf[start - 1]))
        return false;
    if (end - start < 4 || !is_json_number(buf + start, end - start))
        return false;
    memcpy(buf + start, "null", 4);
    memset(buf + start + 4, ' ', end - start - 4);
    return true;
}

/* Parses body into *root: 0, -EBADMSG (not JSON; err set) or -ENOMEM. *overflows counts
 * numbers turned into null. */
static int load(const char *body, size_t len, const char *what, json_t **root, uint64_t *overflows,
                char *err, size_t errlen)
{
    json_error_t je;
    char *copy = NULL;
    unsigned n = 0;
    memset(&je, 0, sizeof(je)); /* jansson does not always set the error code */
    *root = json_loadb(body, len, LOAD_FLAGS, &je);
    while (!*root && json_error_code(&je) == json_error_numeric_overflow && n < MAX_OVERFLOWS) {
        if (!copy) {
            copy = malloc(len);
            if (!copy)
                return -ENOMEM;
            memcpy(copy, body, len);
        }
        if (!blank_overflow(copy, len, je.position))
            break;
        n++;
        memset(&je, 0, sizeof(je));
        *root = json_loadb(copy, len, LOAD_FLAGS, &je);
    }
    free(copy);
    if (!*root) {
        /* jansson leaves the error text empty when an allocation fails inside the parser. */
        if (json_error_code(&je) == json_error_out_of_memory || je.text[0] == '\0')
            return -ENOMEM;
        set_err(err, errlen, "%s: body is not valid JSON: %s (line %d, column %d)", what, je.text,
                je.line, je.column);
        return -EBADMSG;
    }
    *overflows += n;
    return 0;
}

/* What the API said, when a body of the wrong shape is one of its error or notice objects:
 * {"error":..}, {"status":{"error_message":..}}, CoinCap's {"data":{"message":..}}. */
static const char *api_message(const json_t *root)
{
    const json_t *m = json_object_get(root, "error");
    if (json_is_string(m))
        return json_string_value(m);
    m = json_object_get(json_object_get(root, "status"), "error_message");
    if (json_is_string(m))
        return json_string_value(m);
    m = json_object_get(json_object_get(root, "data"), "message");
    if (json_is_string(m))
        return json_string_value(m);
    m = json_object_get(root, "message");
    return json_is_string(m) ? json_string_value(m) : NULL;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static void shape_err(char *err, size_t errlen, const char *what, const char *expected,
                      const json_t *got)
{
    const char *msg = json_is_object(got) ? api_message(got) : NULL;
    if (msg)
        set_err(err, errlen, "%s: expected %s, got %s: %.200s", what, expected, type_name(got),
                msg);
    else
        set_err(err, errlen, "%s: expected %s, got %s", what, expected, type_name(got));
}

/* --- fields ------------------------------------------------------------------------------- */

enum field_kind {
    F_NUM,      /* any JSON number -> DOUBLE */
    F_UINT,     /* integral number in [0, 2^32) -> INT UNSIGNED */
    F_STR,      /* string -> VARCHAR, byte-exact */
    F_ISO_TIME, /* ISO-8601 string -> DATETIME(3) */
    F_JSON_OBJ  /* object -> JSON text */
};

/* A column filled straight from a JSON key. `key` may be a path "a.b" into nested objects. */
struct field {
    const char *key;
    const char *col;
    enum field_kind kind;
};

/* --- one parse: stats, rollback marks, collected ids -------------------------------------- */

#define MAX_OUT 3

struct parse {
    const char *what;
    struct coingecko_stats st; /* this call's counts, added to the caller's on success */
    struct batch *out[MAX_OUT];
    uint32_t mark[MAX_OUT];
    int nout;
    const json_t **ids; /* id strings in the document, copied out on success */
    size_t nids, capids;
    struct strlist *idlist;
    struct sbuf sb;
};

static void parse_init(struct parse *p, const char *what, struct strlist *idlist)
{
    memset(p, 0, sizeof(*p));
    p->what = what;
    p->idlist = idlist;
}

/* Resolves the columns of `b`: cols[0..nfixed) for the names in `fixed`, then one per entry of
 * `fields` (their `col`). -EINVAL when `b` is not a batch of spec `id` or lacks a column.
 * Also marks b for rollback. */
static int parse_out(struct parse *p, struct batch *b, enum batch_spec_id id,
                     const char *const *fixed, size_t nfixed, const struct field *fields,
                     size_t nfields, uint16_t *cols)
{
    if (!b || b->spec->id != id)
        return -EINVAL;
    for (size_t i = 0; i < nfixed + nfields; i++) {
        int c = batch_spec_col(b->spec, i < nfixed ? fixed[i] : fields[i - nfixed].col);
        if (c < 0)
            return -EINVAL;
        cols[i] = (uint16_t)c;
    }
    p->out[p->nout] = b;
    p->mark[p->nout] = b->nrows;
    p->nout++;
    return 0;
}

static int add_row(struct parse *p, struct batch *b)
{
    int row = batch_add_row(b);
    if (row >= 0)
        p->st.rows++;
    return row;
}

static int keep_id(struct parse *p, const json_t *id)
{
    if (!p->idlist)
        return 0;
    if (p->nids == p->capids) {
        size_t cap = p->capids ? p->capids * 2 : 256;
        const json_t **v = realloc(p->ids, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        p->ids = v;
        p->capids = cap;
    }
    p->ids[p->nids++] = id;
    return 0;
}

/* Copies the collected ids into the caller's list; on OOM the list is left as it was. */
static int commit_ids(struct parse *p)
{
    struct strlist *l = p->idlist;
    if (!l || p->nids == 0)
        return 0;
    char **items = realloc(l->items, (l->n + p->nids) * sizeof(*items));
    if (!items)
        return -ENOMEM;
    l->items = items;
    for (size_t i = 0; i < p->nids; i++) {
        const json_t *id = p->ids[i];
        items[l->n + i] = strndup(json_string_value(id), json_string_length(id));
        if (!items[l->n + i]) {
            while (i-- > 0)
                free(items[l->n + i]);
            return -ENOMEM;
        }
    }
    l->n += p->nids;
    return 0;
}

static void add_stats(struct coingecko_stats *dst, const struct coingecko_stats *s)
{
    dst->items += s->items;
    dst->rows += s->rows;
    dst->skipped += s->skipped;
    dst->field_type_errors += s->field_type_errors;
    dst->bad_times += s->bad_times;
    dst->missing_last_updated += s->missing_last_updated;
    dst->missing_coins += s->missing_coins;
    dst->missing_currencies += s->missing_currencies;
    dst->overflow_numbers += s->overflow_numbers;
}

/* Ends a parse: on rc == 0 commits ids and stats, otherwise (or if that fails) drops every
 * row this call added. Frees the parse's scratch. Returns the final rc. */
static int parse_finish(struct parse *p, int rc, struct coingecko_stats *st, char *err,
                        size_t errlen)
{
    if (rc == 0)
        rc = commit_ids(p);
    if (rc == 0) {
        if (st)
            add_stats(st, &p->st);
    } else {
        for (int i = 0; i < p->nout; i++)
            while (p->out[i]->nrows > p->mark[i])
                batch_drop_last(p->out[i]);
        if (rc == -ENOMEM)
            set_err(err, errlen, "%s: out of memory", p->what);
        else if (rc == -EINVAL)
            set_err(err, errlen, "%s: bad arguments (batch spec, vs currency or category)",
                    p->what);
    }
    free(p->ids);
    sbuf_free(&p->sb);
    return rc;
}

/* --- values ------------------------------------------------------------------------------- */

/* The value at `key` (a dotted path) in obj; NULL when missing or null along the way.
 * Counts a type error when a step of the path is not an object. */
static const json_t *lookup(struct parse *p, const json_t *obj, const char *key)
{
    const char *dot = strchr(key, '.');
    if (!dot)
        return json_object_get(obj, key);
    const json_t *outer = json_object_getn(obj, key, (size_t)(dot - key));
    if (!outer || json_is_null(outer))
        return NULL;
    if (!json_is_object(outer)) {
        p->st.field_type_errors++;
        return NULL;
    }
    return lookup(p, outer, dot + 1);
}

/* A usable id: a non-empty string without NUL bytes. */
static bool usable_id(const json_t *v)
{
    return json_is_string(v) && json_string_length(v) > 0 &&
           strlen(json_string_value(v)) == json_string_length(v);
}

static int iso_time(const json_t *v, int64_t *ms)
{
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v) || util_parse_iso8601(s, ms) || *ms < 0 ||
        *ms >= MAX_WALL_MS)
        return -EINVAL;
    return 0;
}

/* Unix seconds (maybe fractional) -> ms: 0, 1 when missing or null, -EINVAL when not a
 * number or out of range (counted). */
static int unix_time(struct parse *p, const json_t *v, int64_t *ms)
{
    if (!v || json_is_null(v))
        return 1;
    if (!json_is_number(v)) {
        p->st.field_type_errors++;
        return -EINVAL;
    }
    /* Range-check after rounding: 253402300799.9999 s rounds up to the first excluded ms. */
    double x = round(json_number_value(v) * 1000.0);
    if (!(x >= 0 && x < (double)MAX_WALL_MS)) {
        p->st.bad_times++;
        return -EINVAL;
    }
    *ms = (int64_t)x;
    return 0;
}

static int put_num(struct parse *p, struct batch *b, uint32_t row, uint16_t col, const json_t *v)
{
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v) || batch_set_dbl(b, row, col, json_number_value(v)))
        p->st.field_type_errors++;
    return 0;
}

/* Sets column `col` from JSON value v (NULL = missing) according to kind. 0 or -ENOMEM. */
static int put_value(struct parse *p, struct batch *b, uint32_t row, uint16_t col,
                     enum field_kind kind, const json_t *v)
{
    if (!v || json_is_null(v))
        return 0; /* the row starts out NULL */
    switch (kind) {
    case F_NUM:
        return put_num(p, b, row, col, v);
    case F_UINT: {
        double d = json_is_number(v) ? json_number_value(v) : -1;
        if (d >= 0 && d <= 4294967295.0 && d == floor(d))
            batch_set_int(b, row, col, (int64_t)d);
        else
            p->st.field_type_errors++;
        return 0;
    }
    case F_STR:
        if (!json_is_string(v)) {
            p->st.field_type_errors++;
            return 0;
        }
        return batch_set_str(b, row, col, json_string_value(v), json_string_length(v));
    case F_ISO_TIME: {
        int64_t ms;
        if (!json_is_string(v))
            p->st.field_type_errors++;
        else if (iso_time(v, &ms))
            p->st.bad_times++;
        else
            batch_set_time(b, row, col, ms);
        return 0;
    }
    case F_JSON_OBJ:
        if (!json_is_object(v)) {
            p->st.field_type_errors++;
            return 0;
        }
        sbuf_reset(&p->sb);
        int rc = dump_value(&p->sb, v);
        return rc ? rc : batch_set_json(b, row, col, p->sb.p, p->sb.len);
    }
    return 0;
}

static int put_fields(struct parse *p, struct batch *b, uint32_t row, const json_t *obj,
                      const struct field *f, const uint16_t *cols, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = put_value(p, b, row, cols[i], f[i].kind, lookup(p, obj, f[i].key));
        if (rc)
            return rc;
    }
    return 0;
}

static int put_string(struct batch *b, uint32_t row, uint16_t col, const char *s)
{
    return batch_set_str(b, row, col, s, strlen(s));
}

static int put_id(struct batch *b, uint32_t row, uint16_t col, const json_t *id)
{
    return batch_set_str(b, row, col, json_string_value(id), json_string_length(id));
}

/* Lower-cases an ASCII vs currency into buf (MAX_VS_LEN + 1 bytes); -EINVAL if empty or long. */
static int lower_vs(const char *s, char *buf)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > MAX_VS_LEN)
        return -EINVAL;
    for (size_t i = 0; i <= n; i++)
        buf[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
    return 0;
}

/* Column lists: names of a table's columns a parser sets, plus the JSON-mapped fields.
 * Each *_cols array starts with the fixed columns (the enum) followed by one per field. */

#define NFIELDS(a) (sizeof(a) / sizeof((a)[0]))

/* --- /coins/list -------------------------------------------------------------------------- */

/* The walk every array endpoint shares: load the body, insist on an array, and call `row`
 * for each element that has a usable id under `id_key` (others are skipped and counted).
 * Finishes the parse (all or nothing) and returns its code; *nitems gets the array's length
 * on success. */
typedef int (*element_cb)(struct parse *p, const json_t *elem, const json_t *id, void *ctx);

static int parse_array(struct parse *p, const char *body, size_t len, const char *expected,
                       const char *id_key, element_cb row, void *ctx, size_t *nitems,
                       struct coingecko_stats *st, char *err, size_t errlen)
{
    json_t *root;
    int rc = load(body, len, p->what, &root, &p->st.overflow_numbers, err, errlen);
    if (rc)
        return parse_finish(p, rc, st, err, errlen);
    if (!json_is_array(root)) {
        shape_err(err, errlen, p->what, expected, root);
        json_decref(root);
        return parse_finish(p, -EBADMSG, st, err, errlen);
    }
    size_t n = json_array_size(root);
    for (size_t i = 0; i < n; i++) {
        const json_t *elem = json_array_get(root, i);
        p->st.items++;
        const json_t *id = json_object_get(elem, id_key);
        if (!usable_id(id)) {
            p->st.skipped++;
            continue;
        }
        if ((rc = row(p, elem, id, ctx)) != 0)
            break;
    }
    rc = parse_finish(p, rc, st, err, errlen);
    json_decref(root);
    if (rc == 0 && nitems)
        *nitems = n;
    return rc;
}

/* What the simple array endpoints' row callbacks need. */
struct simple_ctx {
    const struct coingecko_times *t;
    struct batch *b;
    const uint16_t *cols;
};

static const struct field coins_list_fields[] = {
    {"symbol", "symbol", F_STR},
    {"name", "name", F_STR},
    {"platforms", "platforms", F_JSON_OBJ},
};
enum { CL_ID, CL_LISTED_AT, CL_FIRST_SEEN_AT, CL_UPDATED_AT, CL_FIXED };
static const char *const coins_list_fixed[CL_FIXED] = {"id", "listed_at", "first_seen_at",
                                                       "updated_at"};

static int coins_list_row(struct parse *p, const json_t *coin, const json_t *id, void *arg)
{
    struct simple_ctx *c = arg;
    int row = add_row(p, c->b);
    if (row < 0)
        return row;
    uint32_t r = (uint32_t)row;
    int rc = put_id(c->b, r, c->cols[CL_ID], id);
    batch_set_time(c->b, r, c->cols[CL_LISTED_AT], c->t->run_ms);
    batch_set_time(c->b, r, c->cols[CL_FIRST_SEEN_AT], c->t->run_ms);
    batch_set_time(c->b, r, c->cols[CL_UPDATED_AT], c->t->run_ms);
    if (!rc)
        rc = put_fields(p, c->b, r, coin, coins_list_fields, c->cols + CL_FIXED,
                        NFIELDS(coins_list_fields));
    if (!rc)
        rc = keep_id(p, id);
    return rc;
}

int coingecko_parse_coins_list(const char *body, size_t len, const struct coingecko_times *t,
                               struct batch *assets, struct strlist *ids,
                               struct coingecko_stats *st, char *err, size_t errlen)
{
    struct parse p;
    parse_init(&p, "coingecko /coins/list", ids);
    uint16_t cols[CL_FIXED + NFIELDS(coins_list_fields)];
    int rc = parse_out(&p, assets, BATCH_ASSETS_LIST, coins_list_fixed, CL_FIXED, coins_list_fields,
                       NFIELDS(coins_list_fields), cols);
    if (rc)
        return parse_finish(&p, rc, st, err, errlen);
    struct simple_ctx c = {t, assets, cols};
    return parse_array(&p, body, len, "an array of coins", "id", coins_list_row, &c, NULL, st, err,
                       errlen);
}

/* --- /coins/categories/list --------------------------------------------------------------- */

static const struct field categories_fields[] = {
    {"name", "name", F_STR},
};
enum { CA_ID, CA_UPDATED_AT, CA_FIXED };
static const char *const categories_fixed[CA_FIXED] = {"id", "updated_at"};

static int category_row(struct parse *p, const json_t *cat, const json_t *id, void *arg)
{
    struct simple_ctx *c = arg;
    int row = add_row(p, c->b);
    if (row < 0)
        return row;
    uint32_t r = (uint32_t)row;
    int rc = put_id(c->b, r, c->cols[CA_ID], id);
    batch_set_time(c->b, r, c->cols[CA_UPDATED_AT], c->t->run_ms);
    if (!rc)
        rc = put_fields(p, c->b, r, cat, categories_fields, c->cols + CA_FIXED,
                        NFIELDS(categories_fields));
    return rc;
}

int coingecko_parse_categories_list(const char *body, size_t len, const struct coingecko_times *t,
                                    struct batch *categories, struct coingecko_stats *st, char *err,
                                    size_t errlen)
{
    struct parse p;
    parse_init(&p, "coingecko /coins/categories/list", NULL);
    uint16_t cols[CA_FIXED + NFIELDS(categories_fields)];
    int rc = parse_out(&p, categories, BATCH_CATEGORIES, categories_fixed, CA_FIXED,
                       categories_fields, NFIELDS(categories_fields), cols);
    if (rc)
        return parse_finish(&p, rc, st, err, errlen);
    struct simple_ctx c = {t, categories, cols};
    return parse_array(&p, body, len, "an array of categories", "category_id", category_row, &c,
                       NULL, st, err, errlen);
}

/* --- /coins/markets ----------------------------------------------------------------------- */

static const struct field snapshot_fields[] = {
    {"market_cap_rank", "market_cap_rank", F_UINT},
    {"current_price", "price", F_NUM},
    {"market_cap", "market_cap", F_NUM},
    {"fully_diluted_valuation", "fully_diluted_valuation", F_NUM},
    {"total_volume", "total_volume", F_NUM},
    {"high_24h", "high_24h", F_NUM},
    {"low_24h", "low_24h", F_NUM},
    {"price_change_24h", "price_change_24h", F_NUM},
    {"price_change_percentage_24h", "price_change_pct_24h", F_NUM},
    {"market_cap_change_24h", "market_cap_change_24h", F_NUM},
    {"market_cap_change_percentage_24h", "market_cap_change_pct_24h", F_NUM},
    {"circulating_supply", "circulating_supply", F_NUM},
    {"total_supply", "total_supply", F_NUM},
    {"max_supply", "max_supply", F_NUM},
    {"ath", "ath", F_NUM},
    {"ath_change_percentage", "ath_change_pct", F_NUM},
    {"ath_date", "ath_date", F_ISO_TIME},
    {"atl", "atl", F_NUM},
    {"atl_change_percentage", "atl_change_pct", F_NUM},
    {"atl_date", "atl_date", F_ISO_TIME},
    {"roi", "roi", F_JSON_OBJ},
};
enum { SN_ASSET_ID, SN_VS, SN_SOURCE, SN_SNAPSHOT_AT, SN_FETCHED_AT, SN_FIXED };
static const char *const snapshot_fixed[SN_FIXED] = {"asset_id", "vs_currency", "source",
                                                     "snapshot_at", "fetched_at"};

/* market_cap_rank is not here: the asset row copies the snapshot row's value, so a bad rank
 * is counted once. */
static const struct field asset_market_fields[] = {
    {"symbol", "symbol", F_STR},
    {"name", "name", F_STR},
    {"image", "image_url", F_STR},
};
enum { AM_ID, AM_RANK, AM_FIRST_SEEN_AT, AM_UPDATED_AT, AM_FIXED };
static const char *const asset_market_fixed[AM_FIXED] = {"id", "market_cap_rank", "first_seen_at",
                                                         "updated_at"};

enum { AC_CATEGORY_ID, AC_ASSET_ID, AC_FIRST_SEEN_AT, AC_LAST_SEEN_AT, AC_FIXED };
static const char *const asset_cat_fixed[AC_FIXED] = {"category_id", "asset_id", "first_seen_at",
                                                      "last_seen_at"};

struct markets_cols {
    uint16_t sn[SN_FIXED + NFIELDS(snapshot_fields)];
    uint16_t am[AM_FIXED + NFIELDS(asset_market_fields)];
    uint16_t ac[AC_FIXED];
};

static int markets_row(struct parse *p, const struct coingecko_times *t, const char *vs,
                       const char *category, struct coingecko_markets_out *out,
                       const struct markets_cols *c, const json_t *coin, const json_t *id)
{
    struct batch *sn = out->snapshots;
    int row = add_row(p, sn);
    if (row < 0)
        return row;
    uint32_t r = (uint32_t)row;
    int rc = put_id(sn, r, c->sn[SN_ASSET_ID], id);
    if (!rc)
        rc = put_string(sn, r, c->sn[SN_VS], vs);
    if (!rc)
        rc = put_string(sn, r, c->sn[SN_SOURCE], COINGECKO_SOURCE);
    if (rc)
        return rc;

    /* snapshot_at is part of the primary key, so it always gets a time. */
    const json_t *lu = json_object_get(coin, "last_updated");
    int64_t ms = t->fetched_ms;
    if (!lu || json_is_null(lu)) {
        p->st.missing_last_updated++;
    } else if (!json_is_string(lu)) {
        p->st.field_type_errors++;
        p->st.missing_last_updated++;
    } else if (iso_time(lu, &ms)) {
        ms = t->fetched_ms;
        p->st.bad_times++;
        p->st.missing_last_updated++;
    }
    batch_set_time(sn, r, c->sn[SN_SNAPSHOT_AT], ms);
    batch_set_time(sn, r, c->sn[SN_FETCHED_AT], t->fetched_ms);
    rc = put_fields(p, sn, r, coin, snapshot_fields, c->sn + SN_FIXED, NFIELDS(snapshot_fields));
    if (rc)
        return rc;

    if (out->assets) {
        struct batch *am = out->assets;
        /* The rank is the first snapshot field. */
        const struct val *rank = batch_val(sn, r, c->sn[SN_FIXED]);
        if ((row = add_row(p, am)) < 0)
            return row;
        uint32_t a = (uint32_t)row;
        rc = put_id(am, a, c->am[AM_ID], id);
        if (rank->type == VAL_INT)
            batch_set_int(am, a, c->am[AM_RANK], rank->u.i);
        batch_set_time(am, a, c->am[AM_FIRST_SEEN_AT], t->run_ms);
        batch_set_time(am, a, c->am[AM_UPDATED_AT], t->run_ms);
        if (!rc)
            rc = put_fields(p, am, a, coin, asset_market_fields, c->am + AM_FIXED,
                            NFIELDS(asset_market_fields));
        if (rc)
            return rc;
    }

    if (category) {
        struct batch *ac = out->asset_categories;
        if ((row = add_row(p, ac)) < 0)
            return row;
        uint32_t a = (uint32_t)row;
        rc = put_string(ac, a, c->ac[AC_CATEGORY_ID], category);
        if (!rc)
            rc = put_id(ac, a, c->ac[AC_ASSET_ID], id);
        batch_set_time(ac, a, c->ac[AC_FIRST_SEEN_AT], t->run_ms);
        batch_set_time(ac, a, c->ac[AC_LAST_SEEN_AT], t->run_ms);
        if (rc)
            return rc;
    }
    return keep_id(p, id);
}

static int markets_outputs(struct parse *p, const char *category, struct coingecko_markets_out *out,
                           struct markets_cols *c)
{
    int rc = parse_out(p, out->snapshots, BATCH_MARKET_SNAPSHOTS, snapshot_fixed, SN_FIXED,
                       snapshot_fields, NFIELDS(snapshot_fields), c->sn);
    if (rc)
        return rc;
    if (out->assets) {
        rc = parse_out(p, out->assets, BATCH_ASSETS_MARKET, asset_market_fixed, AM_FIXED,
                       asset_market_fields, NFIELDS(asset_market_fields), c->am);
        if (rc)
            return rc;
    }
    if (category) {
        if (!*category)
            return -EINVAL;
        rc = parse_out(p, out->asset_categories, BATCH_ASSET_CATEGORIES, asset_cat_fixed, AC_FIXED,
                       NULL, 0, c->ac);
    }
    return rc;
}

struct markets_ctx {
    const struct coingecko_times *t;
    const char *vs;
    const char *category;
    struct coingecko_markets_out *out;
    struct markets_cols *c;
};

static int markets_elem(struct parse *p, const json_t *coin, const json_t *id, void *arg)
{
    struct markets_ctx *m = arg;
    return markets_row(p, m->t, m->vs, m->category, m->out, m->c, coin, id);
}

int coingecko_parse_markets(const char *body, size_t len, const struct coingecko_times *t,
                            const char *vs_currency, const char *category,
                            struct coingecko_markets_out *out, struct coingecko_stats *st,
                            char *err, size_t errlen)
{
    struct parse p;
    struct markets_cols c;
    char vs[MAX_VS_LEN + 1];
    parse_init(&p, "coingecko /coins/markets", out->ids);
    int rc = lower_vs(vs_currency, vs);
    if (!rc)
        rc = markets_outputs(&p, category, out, &c);
    if (rc)
        return parse_finish(&p, rc, st, err, errlen);

    struct markets_ctx mc = {t, vs, category, out, &c};
    size_t ncoins = 0;
    rc = parse_array(&p, body, len, "an array of coins", "id", markets_elem, &mc, &ncoins, st, err,
                     errlen);
    if (rc == 0)
        out->ncoins = ncoins;
    return rc;
}

/* --- /simple/price ------------------------------------------------------------------------ */

enum {
    PR_ASSET_ID,
    PR_VS,
    PR_SOURCE,
    PR_UPDATED_AT,
    PR_PRICE,
    PR_MARKET_CAP,
    PR_VOLUME,
    PR_CHANGE,
    PR_FETCHED_AT,
    PR_NCOLS
};
static const char *const prices_names[PR_NCOLS] = {
    "asset_id",   "vs_currency", "source",         "source_updated_at", "price",
    "market_cap", "volume_24h",  "change_24h_pct", "fetched_at"};

/* The keys of one currency in a coin's object: c, c_market_cap, c_24h_vol, c_24h_change. */
struct vs_keys {
    char vs[MAX_VS_LEN + 1];
    char market_cap[MAX_VS_LEN + 12];
    char vol[MAX_VS_LEN + 12];
    char change[MAX_VS_LEN + 12];
};

static int price_row(struct parse *p, struct batch *b, const uint16_t *cols, const char *id,
                     const struct vs_keys *k, const json_t *obj, const json_t *price,
                     int64_t updated_ms, int64_t fetched_ms)
{
    int row = add_row(p, b);
    if (row < 0)
        return row;
    uint32_t r = (uint32_t)row;
    int rc = put_string(b, r, cols[PR_ASSET_ID], id);
    if (!rc)
        rc = put_string(b, r, cols[PR_VS], k->vs);
    if (!rc)
        rc = put_string(b, r, cols[PR_SOURCE], COINGECKO_SOURCE);
    batch_set_time(b, r, cols[PR_UPDATED_AT], updated_ms);
    batch_set_time(b, r, cols[PR_FETCHED_AT], fetched_ms);
    put_num(p, b, r, cols[PR_PRICE], price);
    put_num(p, b, r, cols[PR_MARKET_CAP], json_object_get(obj, k->market_cap));
    put_num(p, b, r, cols[PR_VOLUME], json_object_get(obj, k->vol));
    put_num(p, b, r, cols[PR_CHANGE], json_object_get(obj, k->change));
    return rc;
}

int coingecko_parse_simple_price(const char *body, size_t len, const struct coingecko_times *t,
                                 const struct coingecko_price_req *req, struct batch *prices,
                                 struct coingecko_stats *st, char *err, size_t errlen)
{
    struct parse p;
    uint16_t cols[PR_NCOLS];
    struct vs_keys *keys = NULL;
    parse_init(&p, "coingecko /simple/price", NULL);
    int rc = parse_out(&p, prices, BATCH_PRICES, prices_names, PR_NCOLS, NULL, 0, cols);
    if (!rc && req->nvs) {
        keys = calloc(req->nvs, sizeof(*keys));
        if (!keys)
            rc = -ENOMEM;
    }
    for (size_t v = 0; v < req->nvs && !rc; v++) {
        struct vs_keys *k = &keys[v];
        rc = lower_vs(req->vs_currencies[v], k->vs);
        snprintf(k->market_cap, sizeof(k->market_cap), "%s_market_cap", k->vs);
        snprintf(k->vol, sizeof(k->vol), "%s_24h_vol", k->vs);
        snprintf(k->change, sizeof(k->change), "%s_24h_change", k->vs);
    }
    if (rc) {
        free(keys);
        return parse_finish(&p, rc, st, err, errlen);
    }

    json_t *root;
    rc = load(body, len, p.what, &root, &p.st.overflow_numbers, err, errlen);
    if (rc) {
        free(keys);
        return parse_finish(&p, rc, st, err, errlen);
    }
    if (!json_is_object(root) || api_message(root)) {
        shape_err(err, errlen, p.what, "an object of coins", root);
        json_decref(root);
        free(keys);
        return parse_finish(&p, -EBADMSG, st, err, errlen);
    }

    for (void *it = json_object_iter(root); it; it = json_object_iter_next(root, it)) {
        const char *id = json_object_iter_key(it);
        const json_t *coin = json_object_iter_value(it);
        p.st.items++;
        if (!*id || !json_is_object(coin)) {
            p.st.skipped++;
            continue;
        }
        if (json_object_size(coin) == 0) {
            /* An unknown vs currency gives {"bitcoin":{}}. */
            p.st.missing_coins++;
            continue;
        }
        int64_t updated_ms = t->fetched_ms;
        if (unix_time(&p, json_object_get(coin, "last_updated_at"), &updated_ms)) {
            updated_ms = t->fetched_ms;
            p.st.missing_last_updated++;
        }
        for (size_t v = 0; v < req->nvs && !rc; v++) {
            const json_t *price = json_object_get(coin, keys[v].vs);
            if (!price)
                p.st.missing_currencies++;
            else
                rc = price_row(&p, prices, cols, id, &keys[v], coin, price, updated_ms,
                               t->fetched_ms);
        }
        if (rc)
            break;
    }
    for (size_t i = 0; i < req->nids; i++)
        if (!json_object_get(root, req->ids[i]))
            p.st.missing_coins++;

    rc = parse_finish(&p, rc, st, err, errlen);
    json_decref(root);
    free(keys);
    return rc;
}

/* --- /global ------------------------------------------------------------------------------ */

static const struct field global_fields[] = {
    {"active_cryptocurrencies", "active_cryptocurrencies", F_UINT},
    {"markets", "markets", F_UINT},
    {"total_market_cap.usd", "total_market_cap_usd", F_NUM},
    {"total_volume.usd", "total_volume_usd", F_NUM},
    {"market_cap_percentage.btc", "btc_dominance", F_NUM},
    {"market_cap_percentage.eth", "eth_dominance", F_NUM},
    {"market_cap_change_percentage_24h_usd", "market_cap_change_pct_24h_usd", F_NUM},
    {"total_market_cap", "total_market_cap", F_JSON_OBJ},
    {"total_volume", "total_volume", F_JSON_OBJ},
    {"market_cap_percentage", "market_cap_percentage", F_JSON_OBJ},
};
enum { GL_SOURCE, GL_SNAPSHOT_AT, GL_FETCHED_AT, GL_FIXED };
static const char *const global_fixed[GL_FIXED] = {"source", "snapshot_at", "fetched_at"};

int coingecko_parse_global(const char *body, size_t len, const struct coingecko_times *t,
                           struct batch *global, struct coingecko_stats *st, char *err,
                           size_t errlen)
{
    struct parse p;
    parse_init(&p, "coingecko /global", NULL);
    const size_t nf = NFIELDS(global_fields);
    uint16_t cols[GL_FIXED + NFIELDS(global_fields)];
    int rc = parse_out(&p, global, BATCH_GLOBAL_SNAPSHOTS, global_fixed, GL_FIXED, global_fields,
                       nf, cols);
    if (rc)
        return parse_finish(&p, rc, st, err, errlen);

    json_t *root;
    rc = load(body, len, p.what, &root, &p.st.overflow_numbers, err, errlen);
    if (rc)
        return parse_finish(&p, rc, st, err, errlen);
    const json_t *data = json_object_get(root, "data");
    if (!json_is_object(data) || api_message(root)) {
        if (json_is_object(root) && !api_message(root))
            set_err(err, errlen, "%s: expected an object with a \"data\" object, \"data\" is %s",
                    p.what, data ? type_name(data) : "missing");
        else
            shape_err(err, errlen, p.what, "an object with a \"data\" object", root);
        json_decref(root);
        return parse_finish(&p, -EBADMSG, st, err, errlen);
    }
    p.st.items++;
    int64_t ms;
    if (unix_time(&p, json_object_get(data, "updated_at"), &ms)) {
        ms = t->fetched_ms;
        p.st.missing_last_updated++;
    }
    int row = add_row(&p, global);
    if (row < 0) {
        rc = row;
    } else {
        uint32_t r = (uint32_t)row;
        rc = put_string(global, r, cols[GL_SOURCE], COINGECKO_SOURCE);
        batch_set_time(global, r, cols[GL_SNAPSHOT_AT], ms);
        batch_set_time(global, r, cols[GL_FETCHED_AT], t->fetched_ms);
        if (!rc)
            rc = put_fields(&p, global, r, data, global_fields, cols + GL_FIXED, nf);
    }
    rc = parse_finish(&p, rc, st, err, errlen);
    json_decref(root);
    return rc;
}

void coingecko_strlist_free(struct strlist *l)
{
    if (l)
        strlist_clear(l);
}
