/*
 * jrows: JSON response bodies -> typed rows (the contract is in include/coingest/jrows.h;
 * docs/parsing.md has the rules with examples).
 *
 * Loading. A body is parsed whole by jansson with JSON_DECODE_INT_AS_REAL, so every number
 * becomes the double nearest to its text (strtod), uint256-sized integers included, and with
 * JSON_ALLOW_NUL, so a \u0000 inside a name does not fail a page. jansson rejects a number
 * beyond the range of a double ("real number overflow"); rather than lose the page we
 * overwrite that one token with `null` plus spaces (same length, so positions hold) in a copy
 * and parse again, a few times at most, counting each one. The token must be a well-formed
 * number after a separator, so this never turns invalid JSON into valid JSON.
 *
 * Arrays stream. jrows_array first walks an array body one element at a time (each element
 * parsed from its first byte with JSON_DISABLE_EOF_CHECK, walked, then freed), so what a body
 * costs in memory is its largest element's tree, not the whole document's: the 1.7 MB coin
 * list with platforms was a 16 MB tree. Anything unusual (not an array, a syntax error, a
 * number overflow, the budget) rolls that walk back and takes the whole-document path, which
 * gives the same rows or the same error as before. Each element's tree is built in a small
 * arena reset once the element is walked (see "the element arena" below), so the walk costs
 * one malloc per body rather than some 200 per element.
 *
 * Fields. A field table maps JSON keys (or dotted paths) to columns by name; jrows_out looks
 * the names up in the batch spec once per parse, and the kind decides how a JSON value becomes
 * a column value and what counts as a wrong type.
 *
 * All or nothing. jrows_out notes each output batch's row count; on any error jrows_finish
 * drops the rows added since. Ids for the caller's list are kept as copies and moved into it
 * only after every row is in (one realloc of the list).
 *
 * Memory. What a body becomes in memory depends on its shape, not only its size: the real
 * coin list takes about 6 bytes of jansson allocations per byte of text and a markets page
 * about 5, but `[{},{},...]` takes 72. While jrows_load parses, every allocation jansson makes
 * is counted against a budget of JROWS_MEM_FACTOR bytes per byte of body plus JROWS_MEM_SLACK
 * (jansson's allocator is set once, before main(), to a counting malloc that only counts on a
 * thread inside jrows_load); past it the allocation fails, the parse stops, and the body is
 * refused as too large (-E2BIG) instead of taking gigabytes. Allocations are counted gross
 * (frees are not subtracted), which errs on the side of refusing.
 *
 * JSON text. Columns holding JSON are written by a small serializer rather than json_dumps:
 * jansson prints doubles with %.17g (0.1 -> 0.10000000000000001, 1 -> 1.0), while we print the
 * shortest text that reads back as the same double, and whole numbers below 2^53 without a
 * fraction, which is how APIs send them. Number formatting relies on the C locale.
 */
#include "coingest/jrows.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOAD_FLAGS (JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL)

/* --- the parse's memory budget ------------------------------------------------------------- */

static _Thread_local bool budget_on;
static _Thread_local size_t budget_left;
static _Thread_local bool budget_hit;

/* The element arena: while stream_array parses one element, jansson's allocations come from
 * this thread's arena (a bump pointer, nothing freed one by one) and the whole arena is
 * reset once the element is walked and released. An element's tree is some 200 small blocks
 * (objects, their hash tables and pairs, every number and string), so this takes malloc and
 * free out of about a tenth of a page's parse. What does not fit goes to malloc as before;
 * jrows_json_free tells the two apart by address. */
#define ARENA_BYTES (64 * 1024)
#define ARENA_ALIGN 16

/* Under AddressSanitizer every block stays a malloc() of its own, so that a use after the
 * element is released is still caught. */
#if defined(__SANITIZE_ADDRESS__)
#define ARENA_USE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_USE 0
#endif
#endif
#ifndef ARENA_USE
#define ARENA_USE 1
#endif

static bool arena_enabled = true;
static _Thread_local char *arena;
static _Thread_local size_t arena_used;
static _Thread_local bool arena_on;

static void *counting_malloc(size_t n)
{
    if (budget_on) {
        if (n > budget_left) {
            budget_hit = true;
            return NULL;
        }
        budget_left -= n;
    }
    if (arena_on && n <= ARENA_BYTES) {
        size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
        if (need <= ARENA_BYTES - arena_used) {
            void *p = arena + arena_used;
            arena_used += need;
            return p;
        }
    }
    return malloc(n);
}

static void jrows_json_free(void *p)
{
    /* A block of this thread's arena goes with the arena. Only the thread that parsed an
     * element frees it (the element never leaves stream_array), so checking this thread's
     * arena is enough. */
    if (arena && (char *)p >= arena && (char *)p < arena + ARENA_BYTES)
        return;
    free(p);
}

/* Before main(), while the process has one thread: jansson's allocator is a plain global that
 * every thread's json_* calls read (the sink's writers dump rejected rows), so it must not
 * change under them later. Outside an element arena both are malloc() and free(). */
__attribute__((constructor)) static void install_allocator(void)
{
    json_set_alloc_funcs(counting_malloc, jrows_json_free);
}

void jrows_element_arena(bool on)
{
    arena_enabled = on;
}

size_t jrows_mem_budget(size_t len)
{
    if (len > (SIZE_MAX - JROWS_MEM_SLACK) / JROWS_MEM_FACTOR)
        return SIZE_MAX;
    return len * JROWS_MEM_FACTOR + JROWS_MEM_SLACK;
}

static json_t *load_budgeted(const char *body, size_t len, json_error_t *je)
{
    budget_left = jrows_mem_budget(len);
    budget_hit = false;
    budget_on = true;
    json_t *root = json_loadb(body, len, LOAD_FLAGS, je);
    budget_on = false;
    return root;
}

/* Times must fit DATETIME(3): from the epoch to the end of year 9999. */
#define MAX_WALL_MS 253402300800000LL

/* Largest value of an INT UNSIGNED column. */
#define MAX_UINT_COL 4294967295.0

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

/* Numbers as sbuf_put_double spells them; JSON has no NaN or infinity: null. */
static int dump_number(struct sbuf *b, double d)
{
    if (!isfinite(d))
        return sbuf_append(b, "null", 4);
    return sbuf_put_double(b, d);
}

/* Recursion depth is bounded by jansson's own parse depth limit. */
int jrows_dump(struct sbuf *b, const json_t *v)
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
                rc = jrows_dump(b, json_object_iter_value(it));
        }
        return rc ? rc : sbuf_putc(b, '}');
    }
    case JSON_ARRAY: {
        rc = sbuf_putc(b, '[');
        for (size_t i = 0; i < json_array_size(v) && !rc; i++) {
            if (i)
                rc = sbuf_putc(b, ',');
            if (!rc)
                rc = jrows_dump(b, json_array_get(v, i));
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

int jrows_load(struct jrows *j, const char *body, size_t len, json_t **root)
{
    json_error_t je;
    char *copy = NULL;
    unsigned n = 0;
    memset(&je, 0, sizeof(je)); /* jansson does not always set the error code */
    *root = load_budgeted(body, len, &je);
    while (!*root && !budget_hit && json_error_code(&je) == json_error_numeric_overflow &&
           n < JROWS_MAX_OVERFLOWS) {
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
        *root = load_budgeted(copy, len, &je);
    }
    free(copy);
    if (!*root && budget_hit) {
        jrows_error(j,
                    "body of %zu bytes would take more than %zu MiB to parse (the shape of "
                    "its data, not its size; refused)",
                    len, jrows_mem_budget(len) >> 20);
        return -E2BIG;
    }
    if (!*root) {
        /* jansson leaves the error text empty when an allocation fails inside the parser. */
        if (json_error_code(&je) == json_error_out_of_memory || je.text[0] == '\0')
            return -ENOMEM;
        jrows_error(j, "body is not valid JSON: %s (line %d, column %d)", je.text, je.line,
                    je.column);
        return -EBADMSG;
    }
    j->st.overflow_numbers += n;
    return 0;
}

/* --- messages ----------------------------------------------------------------------------- */

void jrows_error(struct jrows *j, const char *fmt, ...)
{
    if (j->err_set || !j->err || j->errlen == 0)
        return;
    int n = snprintf(j->err, j->errlen, "%s: ", j->what);
    if (n >= 0 && (size_t)n < j->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->err + n, j->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    j->err_set = true;
}

const char *jrows_type_name(const json_t *v)
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

const char *jrows_api_message(const struct jrows *j, const json_t *root)
{
    return j->message && json_is_object(root) ? j->message(root) : NULL;
}

void jrows_shape_error(struct jrows *j, const char *expected, const json_t *got)
{
    const char *msg = jrows_api_message(j, got);
    if (msg)
        jrows_error(j, "expected %s, got %s: %.200s", expected, jrows_type_name(got), msg);
    else
        jrows_error(j, "expected %s, got %s", expected, jrows_type_name(got));
}

/* --- a parse: outputs, rollback marks, kept ids ------------------------------------------- */

void jrows_begin(struct jrows *j, const char *what, struct strlist *ids, jrows_message_fn message,
                 char *err, size_t errlen)
{
    memset(j, 0, sizeof(*j));
    j->what = what;
    j->idlist = ids;
    j->message = message;
    j->err = err;
    j->errlen = errlen;
}

int jrows_out(struct jrows *j, struct batch *b, enum batch_spec_id id, const char *const *fixed,
              size_t nfixed, const struct jrows_field *fields, size_t nfields, uint16_t *cols)
{
    if (!b || b->spec->id != id || j->nout == JROWS_MAX_OUT)
        return -EINVAL;
    for (size_t i = 0; i < nfixed + nfields; i++) {
        int c = batch_spec_col(b->spec, i < nfixed ? fixed[i] : fields[i - nfixed].col);
        if (c < 0)
            return -EINVAL;
        cols[i] = (uint16_t)c;
    }
    j->out[j->nout] = b;
    j->mark[j->nout] = b->nrows;
    j->nout++;
    return 0;
}

int jrows_add_row(struct jrows *j, struct batch *b)
{
    int row = batch_add_row(b);
    if (row >= 0)
        j->st.rows++;
    return row;
}

int jrows_keep_id(struct jrows *j, const json_t *id)
{
    if (!j->idlist)
        return 0;
    if (j->nids == j->capids) {
        size_t cap = j->capids ? j->capids * 2 : 256;
        char **v = realloc(j->ids, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        j->ids = v;
        j->capids = cap;
    }
    /* A copy: jrows_array frees each element (and resets its arena) once it is walked. */
    char *copy = strndup(json_string_value(id), json_string_length(id));
    if (!copy)
        return -ENOMEM;
    j->ids[j->nids++] = copy;
    return 0;
}

/* Frees the kept ids that did not go to the caller's list. */
static void release_ids(struct jrows *j)
{
    for (size_t i = 0; i < j->nids; i++)
        free(j->ids[i]);
    j->nids = 0;
}

/* Moves the kept ids into the caller's list; on OOM the list is left as it was. */
static int commit_ids(struct jrows *j)
{
    struct strlist *l = j->idlist;
    if (!l || j->nids == 0)
        return 0;
    char **items = realloc(l->items, (l->n + j->nids) * sizeof(*items));
    if (!items)
        return -ENOMEM;
    l->items = items;
    memcpy(items + l->n, j->ids, j->nids * sizeof(*items));
    l->n += j->nids;
    j->nids = 0;
    return 0;
}

int jrows_finish(struct jrows *j, int rc)
{
    if (rc == 0)
        rc = commit_ids(j);
    if (rc != 0) {
        for (int i = 0; i < j->nout; i++)
            while (j->out[i]->nrows > j->mark[i])
                batch_drop_last(j->out[i]);
        if (rc == -ENOMEM)
            jrows_error(j, "out of memory");
        else if (rc == -EINVAL)
            jrows_error(j, "bad arguments (a batch of the wrong spec or without a column)");
    }
    release_ids(j);
    free(j->ids);
    j->ids = NULL;
    j->nids = j->capids = 0;
    sbuf_free(&j->sb);
    return rc;
}

/* One element of an array body: its id checked as jrows_array does, then handed to elem. */
static int walk_elem(struct jrows *j, const json_t *e, const char *id_key, jrows_elem_cb elem,
                     void *arg)
{
    const json_t *id = NULL;
    j->st.items++;
    if (id_key) {
        id = json_object_get(e, id_key);
        if (!jrows_usable_id(id)) {
            j->st.skipped++;
            return 0;
        }
    }
    return elem(j, e, id, arg);
}

static size_t skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* The streaming walk: an array body parsed one element at a time (json_loadb with
 * JSON_DISABLE_EOF_CHECK from each element's first byte; `position` tells where it ended),
 * each element freed once walked, so a 2 MB coin list never becomes one 12 MB tree. The
 * memory budget counts every element's allocations against the whole body's budget, as one
 * load would. Returns 0 (walked, *n elements), an elem callback's error, or 1 when the body
 * needs the whole-document walk: it is not a well-formed array, or an element needs the
 * overflow fix or breaks the budget; that walk then gives the same rows, or the same
 * message, as before, going on after the *n elements walked here. An allocation failure is
 * -ENOMEM here, as the whole-document load reports it. */
static int stream_array(struct jrows *j, const char *body, size_t len, const char *id_key,
                        jrows_elem_cb elem, void *arg, size_t *n)
{
    size_t i = skip_ws(body, len, 0);
    *n = 0;
    if (i == len || body[i] != '[')
        return 1;
    i = skip_ws(body, len, i + 1);
    if (i < len && body[i] == ']')
        return skip_ws(body, len, i + 1) == len ? 0 : 1;
    budget_left = jrows_mem_budget(len);
    budget_hit = false;
    /* The arena is this call's (stream_array does not nest on a thread); without one every
     * allocation simply goes to malloc. */
    char *own = ARENA_USE && arena_enabled && !arena ? malloc(ARENA_BYTES) : NULL;
    if (own)
        arena = own;
    int rc = 1;
    for (;;) {
        json_error_t je;
        memset(&je, 0, sizeof(je));
        budget_on = true;
        arena_on = own != NULL;
        json_t *e = json_loadb(body + i, len - i,
                               LOAD_FLAGS | JSON_DECODE_ANY | JSON_DISABLE_EOF_CHECK, &je);
        arena_on = false;
        budget_on = false;
        if (!e && !budget_hit &&
            (json_error_code(&je) == json_error_out_of_memory || je.text[0] == '\0')) {
            rc = -ENOMEM; /* as jrows_load reports it */
            break;
        }
        if (!e || je.position <= 0) {
            json_decref(e);
            rc = 1;
            break;
        }
        (*n)++;
        rc = walk_elem(j, e, id_key, elem, arg);
        json_decref(e);
        if (own)
            arena_used = 0;
        if (rc)
            break;
        i = skip_ws(body, len, i + (size_t)je.position);
        if (i < len && body[i] == ',') {
            i = skip_ws(body, len, i + 1);
            continue;
        }
        if (i < len && body[i] == ']')
            rc = skip_ws(body, len, i + 1) == len ? 0 : 1;
        else
            rc = 1;
        break;
    }
    if (own) {
        arena_used = 0;
        arena = NULL;
        free(own);
    }
    return rc;
}

int jrows_array(struct jrows *j, const char *body, size_t len, const char *expected,
                const char *id_key, jrows_elem_cb elem, void *arg, size_t *nitems)
{
    size_t n = 0;
    int rc = stream_array(j, body, len, id_key, elem, arg, &n);
    if (rc != 1) {
        rc = jrows_finish(j, rc);
        if (rc == 0 && nitems)
            *nitems = n;
        return rc;
    }
    /* The whole-document walk. The n elements the stream already walked parsed on their own,
     * so the whole document holds them unchanged (no overflowing number among them): their
     * rows, ids and counts stay, and the walk goes on from element n. Walking them again would
     * run the callbacks twice, and callbacks keep state of their own (a product list, a
     * count of missing times). */
    json_t *root;
    rc = jrows_load(j, body, len, &root);
    if (rc)
        return jrows_finish(j, rc);
    if (!json_is_array(root)) {
        jrows_shape_error(j, expected, root);
        json_decref(root);
        return jrows_finish(j, -EBADMSG);
    }
    size_t walked = n;
    n = json_array_size(root);
    for (size_t i = walked; i < n && !rc; i++)
        rc = walk_elem(j, json_array_get(root, i), id_key, elem, arg);
    rc = jrows_finish(j, rc);
    json_decref(root);
    if (rc == 0 && nitems)
        *nitems = n;
    return rc;
}

/* --- values ------------------------------------------------------------------------------- */

bool jrows_usable_id(const json_t *v)
{
    return json_is_string(v) && json_string_length(v) > 0 &&
           strlen(json_string_value(v)) == json_string_length(v);
}

int jrows_iso_time(const json_t *v, int64_t *ms)
{
    const char *s = json_string_value(v);
    if (!s || strlen(s) != json_string_length(v) || util_parse_iso8601(s, ms) || *ms < 0 ||
        *ms >= MAX_WALL_MS)
        return -EINVAL;
    return 0;
}

int jrows_unix_time(struct jrows *j, const json_t *v, int64_t *ms)
{
    if (!v || json_is_null(v))
        return 1;
    if (!json_is_number(v)) {
        j->st.field_type_errors++;
        return -EINVAL;
    }
    /* Range-check after rounding: 253402300799.9999 s rounds up to the first excluded ms. */
    double x = round(json_number_value(v) * 1000.0);
    if (!(x >= 0 && x < (double)MAX_WALL_MS)) {
        j->st.bad_times++;
        return -EINVAL;
    }
    *ms = (int64_t)x;
    return 0;
}

int jrows_number(const json_t *v, double *d)
{
    if (json_is_number(v)) {
        *d = json_number_value(v);
        return 0;
    }
    const char *s = json_string_value(v);
    /* The JSON grammar, not strtod's: no blanks, hex, "inf" or "nan" sneak in as numbers. */
    if (!s || !is_json_number(s, json_string_length(v)))
        return -EINVAL;
    *d = strtod(s, NULL);
    return 0;
}

int jrows_put(struct jrows *j, struct batch *b, uint32_t row, uint16_t col, enum jrows_kind kind,
              const json_t *v)
{
    if (!v) {
        j->st.missing_fields++;
        return 0; /* the row starts out NULL */
    }
    if (json_is_null(v))
        return 0;
    switch (kind) {
    case JROWS_NUM:
        if (!json_is_number(v) || batch_set_dbl(b, row, col, json_number_value(v)))
            j->st.field_type_errors++;
        return 0;
    case JROWS_NUMSTR: {
        double d;
        if (jrows_number(v, &d) || batch_set_dbl(b, row, col, d))
            j->st.field_type_errors++;
        return 0;
    }
    case JROWS_UINT:
    case JROWS_UINTSTR: {
        double d;
        bool num = (kind == JROWS_UINTSTR || json_is_number(v)) && jrows_number(v, &d) == 0;
        if (num && d >= 0 && d <= MAX_UINT_COL && d == floor(d))
            batch_set_int(b, row, col, (int64_t)d);
        else
            j->st.field_type_errors++;
        return 0;
    }
    case JROWS_STR:
        if (!json_is_string(v)) {
            j->st.field_type_errors++;
            return 0;
        }
        return batch_set_str(b, row, col, json_string_value(v), json_string_length(v));
    case JROWS_ISO_TIME: {
        int64_t ms;
        if (!json_is_string(v))
            j->st.field_type_errors++;
        else if (jrows_iso_time(v, &ms))
            j->st.bad_times++;
        else
            batch_set_time(b, row, col, ms);
        return 0;
    }
    case JROWS_JSON_OBJ: {
        if (!json_is_object(v)) {
            j->st.field_type_errors++;
            return 0;
        }
        sbuf_reset(&j->sb);
        int rc = jrows_dump(&j->sb, v);
        return rc ? rc : batch_set_json(b, row, col, j->sb.p, j->sb.len);
    }
    }
    return 0;
}

/* The value at `key` (a dotted path) in obj, for jrows_put: NULL when absent, JSON null when
 * a step of the path is null (a NULL column, not a missing one). Counts a type error, and
 * gives JSON null, when a step of the path is not an object. */
static const json_t *lookup(struct jrows *j, const json_t *obj, const char *key)
{
    const char *dot = strchr(key, '.');
    if (!dot)
        return json_object_get(obj, key);
    const json_t *outer = json_object_getn(obj, key, (size_t)(dot - key));
    if (!outer || json_is_null(outer))
        return outer;
    if (!json_is_object(outer)) {
        j->st.field_type_errors++;
        return json_null();
    }
    return lookup(j, outer, dot + 1);
}

int jrows_put_fields(struct jrows *j, struct batch *b, uint32_t row, const json_t *obj,
                     const struct jrows_field *fields, const uint16_t *cols, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = jrows_put(j, b, row, cols[i], fields[i].kind, lookup(j, obj, fields[i].key));
        if (rc)
            return rc;
    }
    return 0;
}
