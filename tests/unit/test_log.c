/*
 * ctest-labels: tsan
 * test_log: the structured logger. logfmt quoting and escaping, JSON escaping (every JSON line
 * is also read back with jansson), numbers, the journald prefix, level filtering through the real
 * log_emit() path into a pipe, secret masking (registered secrets and key parameters), cutting
 * long lines, and many threads logging at once while secrets are being registered.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "coingest/log.h"
#include "coingest/source.h"

/* 2026-11-23T13:20:01.123Z */
#define T0 1795440001123ull

static char line[LOG_LINE_MAX + 1];

static const char *fmt(enum log_level level, enum log_format format, bool journal, const char *msg,
                       const struct log_field *fields)
{
    size_t n = log_format_line(line, sizeof(line), level, format, journal, T0, msg, fields);
    assert_int_equal(n, strlen(line));
    assert_true(n <= LOG_LINE_MAX);
    return line;
}

/* One field, logfmt, no journal: returns what follows "msg=m " (without the newline). */
static const char *logfmt1(struct log_field f)
{
    struct log_field fields[] = {f, LOG_END};
    const char *s = fmt(LOG_INFO, LOG_FORMAT_TEXT, true, "m", fields);
    static char tail[LOG_LINE_MAX];
    const char *prefix = "<6>level=info msg=m ";
    assert_memory_equal(s, prefix, strlen(prefix));
    snprintf(tail, sizeof(tail), "%s", s + strlen(prefix));
    assert_true(strlen(tail) > 0 && tail[strlen(tail) - 1] == '\n');
    tail[strlen(tail) - 1] = '\0';
    return tail;
}

/* One field, JSON, no journal: returns the raw text of the value (without the newline) after
 * checking that the whole line is valid JSON. */
static const char *json1(struct log_field f)
{
    struct log_field fields[] = {f, LOG_END};
    const char *s = fmt(LOG_INFO, LOG_FORMAT_JSON, true, "m", fields);
    static char tail[LOG_LINE_MAX];
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "<6>{\"level\":\"info\",\"msg\":\"m\",\"%s\":", f.key);
    assert_memory_equal(s, prefix, strlen(prefix));
    json_error_t jerr;
    json_t *j = json_loads(s + 3, JSON_DISABLE_EOF_CHECK | JSON_DECODE_INT_AS_REAL, &jerr);
    if (!j)
        fail_msg("not JSON: %s (%s)", s, jerr.text);
    json_decref(j);
    size_t n = strlen(s) - strlen(prefix);
    assert_true(n >= 2 && memcmp(s + strlen(s) - 2, "}\n", 2) == 0);
    memcpy(tail, s + strlen(prefix), n - 2);
    tail[n - 2] = '\0';
    return tail;
}

static int teardown(void **state)
{
    (void)state;
    log_clear_secrets();
    log_set_fd(2);
    unsetenv("JOURNAL_STREAM");
    log_setup(LOG_INFO, LOG_FORMAT_TEXT);
    return 0;
}

/* ---- formats ------------------------------------------------------------------------------ */

static void test_logfmt_line(void **state)
{
    (void)state;
    struct log_field f[] = {LOG_S("job", "prices"), LOG_U("rows", 17500), LOG_END};
    assert_string_equal(
        fmt(LOG_INFO, LOG_FORMAT_TEXT, false, "job finished", f),
        "ts=2026-11-23T13:20:01.123Z level=info msg=\"job finished\" job=prices rows=17500\n");
    assert_string_equal(fmt(LOG_WARN, LOG_FORMAT_TEXT, false, "started", NULL),
                        "ts=2026-11-23T13:20:01.123Z level=warn msg=started\n");
    assert_string_equal(fmt(LOG_DEBUG, LOG_FORMAT_TEXT, false, NULL, NULL),
                        "ts=2026-11-23T13:20:01.123Z level=debug msg=\"\"\n");
    assert_string_equal(log_level_name(LOG_ERROR), "error");
    assert_string_equal(log_level_name(LOG_WARN), "warn");
    assert_string_equal(log_level_name(LOG_INFO), "info");
    assert_string_equal(log_level_name(LOG_DEBUG), "debug");
}

static void test_logfmt_quoting(void **state)
{
    (void)state;
    assert_string_equal(logfmt1(LOG_S("k", "plain-value_1.2/x")), "k=plain-value_1.2/x");
    assert_string_equal(logfmt1(LOG_S("k", "")), "k=\"\"");
    assert_string_equal(logfmt1(LOG_S("k", NULL)), "k=null");
    assert_string_equal(logfmt1(LOG_S("k", "has space")), "k=\"has space\"");
    assert_string_equal(logfmt1(LOG_S("k", "q\"uote")), "k=\"q\\\"uote\"");
    assert_string_equal(logfmt1(LOG_S("k", "a=b")), "k=\"a=b\"");
    assert_string_equal(logfmt1(LOG_S("k", "line\nbreak")), "k=\"line\\nbreak\"");
    assert_string_equal(logfmt1(LOG_S("k", "cr\rtab\t")), "k=\"cr\\rtab\\t\"");
    assert_string_equal(logfmt1(LOG_S("k", "\x01"
                                           "ctl\x7f")),
                        "k=\"\\u0001ctl\\u007f\"");
    /* A backslash alone needs no quotes; inside quotes it is escaped. */
    assert_string_equal(logfmt1(LOG_S("k", "back\\slash")), "k=back\\slash");
    assert_string_equal(logfmt1(LOG_S("k", "a b\\")), "k=\"a b\\\\\"");
    assert_string_equal(logfmt1(LOG_S("k", "caf\xc3\xa9")), "k=caf\xc3\xa9");
    /* Keys are code constants, but nothing in one may break the line. */
    assert_string_equal(logfmt1(LOG_S("bad key=\"", "v")), "bad_key__=v");
}

static void test_numbers(void **state)
{
    (void)state;
    assert_string_equal(logfmt1(LOG_I("n", -5)), "n=-5");
    assert_string_equal(logfmt1(LOG_I("n", INT64_MIN)), "n=-9223372036854775808");
    assert_string_equal(logfmt1(LOG_U("n", UINT64_MAX)), "n=18446744073709551615");
    assert_string_equal(logfmt1(LOG_F("n", 0.1)), "n=0.1");
    assert_string_equal(logfmt1(LOG_F("n", 65432.12)), "n=65432.1");
    assert_string_equal(logfmt1(LOG_F("n", 1e300)), "n=1e+300");
    assert_string_equal(logfmt1(LOG_F("n", 2.5)), "n=2.5");
    /* Float noise is cut to six significant digits; large whole amounts keep their digits. */
    assert_string_equal(logfmt1(LOG_F("n", 1.0 / 3.0)), "n=0.333333");
    assert_string_equal(logfmt1(LOG_F("n", 8.9847222222222225)), "n=8.98472");
    assert_string_equal(logfmt1(LOG_F("n", 388140.00000000006)), "n=388140");
    assert_string_equal(logfmt1(LOG_F("n", 17500000.4)), "n=17500000");
    assert_string_equal(logfmt1(LOG_F("n", 0.000123456789)), "n=0.000123457");
    assert_string_equal(logfmt1(LOG_F("n", NAN)), "n=NaN");
    assert_string_equal(logfmt1(LOG_F("n", INFINITY)), "n=+Inf");
    assert_string_equal(logfmt1(LOG_F("n", -INFINITY)), "n=-Inf");
    assert_string_equal(logfmt1(LOG_B("b", true)), "b=true");
    assert_string_equal(logfmt1(LOG_B("b", false)), "b=false");

    assert_string_equal(json1(LOG_I("n", -5)), "-5");
    assert_string_equal(json1(LOG_U("n", UINT64_MAX)), "18446744073709551615");
    assert_string_equal(json1(LOG_F("n", 0.1)), "0.1");
    assert_string_equal(json1(LOG_F("n", 1e300)), "1e+300");
    assert_string_equal(json1(LOG_F("n", NAN)), "null");
    assert_string_equal(json1(LOG_F("n", INFINITY)), "null");
    assert_string_equal(json1(LOG_F("n", -INFINITY)), "null");
    assert_string_equal(json1(LOG_B("b", true)), "true");
    assert_string_equal(json1(LOG_S("s", NULL)), "null");
}

static void test_json_line(void **state)
{
    (void)state;
    struct log_field f[] = {LOG_S("job", "prices"), LOG_U("rows", 17500), LOG_END};
    const char *s = fmt(LOG_INFO, LOG_FORMAT_JSON, false, "job finished", f);
    assert_string_equal(s, "{\"ts\":\"2026-11-23T13:20:01.123Z\",\"level\":\"info\",\"msg\":\"job "
                           "finished\",\"job\":\"prices\",\"rows\":17500}\n");
    json_error_t jerr;
    json_t *j = json_loads(s, 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "job finished");
    assert_int_equal(json_integer_value(json_object_get(j, "rows")), 17500);
    json_decref(j);
}

static void test_json_escaping(void **state)
{
    (void)state;
    assert_string_equal(json1(LOG_S("s", "q\"b\\s/")), "\"q\\\"b\\\\s/\"");
    assert_string_equal(json1(LOG_S("s", "\n\r\t\b\f")), "\"\\n\\r\\t\\u0008\\u000c\"");
    assert_string_equal(json1(LOG_S("s", "\x01\x1f\x7f")), "\"\\u0001\\u001f\\u007f\"");
    assert_string_equal(json1(LOG_S("s", "")), "\"\"");
    /* Valid UTF-8 passes; anything else becomes U+FFFD so the line stays valid JSON. */
    assert_string_equal(json1(LOG_S("s", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80")),
                        "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    assert_string_equal(json1(LOG_S("s", "a\xff")), "\"a\\ufffd\"");
    assert_string_equal(json1(LOG_S("s", "\xc0\xaf")), "\"\\ufffd\\ufffd\"");
    assert_string_equal(json1(LOG_S("s", "\xed\xa0\x80")), "\"\\ufffd\\ufffd\\ufffd\"");
    assert_string_equal(json1(LOG_S("s", "\xe2\x82")), "\"\\ufffd\\ufffd\"");
    assert_string_equal(json1(LOG_S("s", "\xf4\x90\x80\x80")), "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    /* Keys are escaped too. */
    struct log_field f[] = {LOG_S("we\"ird", "v"), LOG_END};
    assert_string_equal(fmt(LOG_ERROR, LOG_FORMAT_JSON, true, "x\ny", f),
                        "<3>{\"level\":\"error\",\"msg\":\"x\\ny\",\"we\\\"ird\":\"v\"}\n");
}

static void test_journal_prefix(void **state)
{
    (void)state;
    assert_string_equal(fmt(LOG_ERROR, LOG_FORMAT_TEXT, true, "x", NULL), "<3>level=error msg=x\n");
    assert_string_equal(fmt(LOG_WARN, LOG_FORMAT_TEXT, true, "x", NULL), "<4>level=warn msg=x\n");
    assert_string_equal(fmt(LOG_INFO, LOG_FORMAT_TEXT, true, "x", NULL), "<6>level=info msg=x\n");
    assert_string_equal(fmt(LOG_DEBUG, LOG_FORMAT_TEXT, true, "x", NULL), "<7>level=debug msg=x\n");
    assert_string_equal(fmt(LOG_INFO, LOG_FORMAT_JSON, true, "x", NULL),
                        "<6>{\"level\":\"info\",\"msg\":\"x\"}\n");
    assert_string_equal(fmt(LOG_WARN, LOG_FORMAT_JSON, true, "x", NULL),
                        "<4>{\"level\":\"warn\",\"msg\":\"x\"}\n");
}

/* ---- emitting through a pipe ----------------------------------------------------------------- */

static size_t drain(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return n;
}

static void test_level_filter_and_emit(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(fcntl(p[0], F_SETFL, O_NONBLOCK), 0);
    log_set_fd(p[1]);
    unsetenv("JOURNAL_STREAM");

    log_setup(LOG_WARN, LOG_FORMAT_TEXT);
    assert_true(log_enabled(LOG_ERROR));
    assert_true(log_enabled(LOG_WARN));
    assert_false(log_enabled(LOG_INFO));
    assert_false(log_enabled(LOG_DEBUG));
    errno = EAGAIN;
    log_info("dropped");
    log_debug("dropped too", LOG_I("n", 1));
    log_warn("kept", LOG_I("n", 1));
    log_error("also kept");
    assert_int_equal(errno, EAGAIN); /* logging leaves errno alone */

    char buf[4096];
    drain(p[0], buf, sizeof(buf));
    /* "ts=YYYY-MM-DDTHH:MM:SS.mmmZ " is 28 characters. */
    char *second = strchr(buf, '\n');
    assert_non_null(second);
    second++;
    assert_memory_equal(buf, "ts=", 3);
    assert_int_equal(buf[26], 'Z');
    assert_memory_equal(buf + 28, "level=warn msg=kept n=1\n", 24);
    assert_string_equal(second + 28, "level=error msg=\"also kept\"\n");

    log_setup(LOG_DEBUG, LOG_FORMAT_JSON);
    assert_true(log_enabled(LOG_DEBUG));
    log_debug("dbg", LOG_S("k", "v"));
    drain(p[0], buf, sizeof(buf));
    json_error_t jerr;
    json_t *j = json_loads(buf, 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "debug");
    assert_string_equal(json_string_value(json_object_get(j, "k")), "v");
    assert_non_null(json_object_get(j, "ts"));
    json_decref(j);

    /* Under journald: priority prefix, no timestamp. */
    setenv("JOURNAL_STREAM", "8:12345", 1);
    log_setup(LOG_INFO, LOG_FORMAT_TEXT);
    log_info("to journal", LOG_B("ok", true));
    drain(p[0], buf, sizeof(buf));
    assert_string_equal(buf, "<6>level=info msg=\"to journal\" ok=true\n");

    log_set_fd(2);
    close(p[0]);
    close(p[1]);
}

/* ---- secrets -------------------------------------------------------------------------------- */

static void test_registered_secrets(void **state)
{
    (void)state;
    log_add_secret("hunter2");
    log_add_secret(NULL);
    log_add_secret("");
    log_add_secret("hunter2");
    struct log_field f[] = {LOG_S("dsn", "mysql://u:hunter2@db/x"), LOG_END};
    assert_string_equal(fmt(LOG_INFO, LOG_FORMAT_TEXT, true, "login hunter2 ok", f),
                        "<6>level=info msg=\"login ******** ok\" dsn=mysql://u:********@db/x\n");
    assert_string_equal(fmt(LOG_INFO, LOG_FORMAT_JSON, true, "hunter2hunter2", f),
                        "<6>{\"level\":\"info\",\"msg\":\"****************\",\"dsn\":\"mysql://"
                        "u:********@db/x\"}\n");

    /* A secret with characters the output escapes is still found (masking is on raw text). */
    log_add_secret("pa\"ss\nw");
    assert_string_equal(json1(LOG_S("s", "x pa\"ss\nw y")), "\"x ******** y\"");
    assert_string_equal(logfmt1(LOG_S("s", "x pa\"ss\nw y")), "s=\"x ******** y\"");

    /* The longer of two overlapping secrets is masked whole, whatever the order they came in. */
    log_add_secret("abc");
    log_add_secret("abcdef");
    log_add_secret("xyz123");
    log_add_secret("xyz");
    assert_string_equal(logfmt1(LOG_S("s", "abcdef-abc-xyz123-xyz")),
                        "s=********-********-********-********");

    log_clear_secrets();
    assert_string_equal(logfmt1(LOG_S("s", "hunter2 abcdef")), "s=\"hunter2 abcdef\"");
}

static void test_key_parameters(void **state)
{
    (void)state;
    /* Before the sources register theirs, only the generic names are masked. */
    assert_string_equal(logfmt1(LOG_S("s", "x-cg-pro-api-key:CG-xyz")),
                        "s=x-cg-pro-api-key:CG-xyz");
    assert_int_equal(source_register_log_masks(), 0);
    assert_int_equal(source_register_log_masks(), 0); /* twice is harmless */
    assert_int_equal(log_add_secret_param("token"), -EINVAL);
    assert_int_equal(log_add_secret_param(""), -EINVAL);
    assert_int_equal(log_add_secret_param("x-token:"), 0);
    assert_string_equal(logfmt1(LOG_S("s", "X-Token: t0k&n")), "s=\"X-Token: ********&n\"");
    assert_string_equal(
        logfmt1(LOG_S("url", "https://api.coingecko.com/api/v3/coins/markets?vs_currency=usd&"
                             "x_cg_demo_api_key=CG-abc123&page=2")),
        "url=\"https://api.coingecko.com/api/v3/coins/markets?vs_currency=usd&x_cg_demo_api_key="
        "********&page=2\"");
    assert_string_equal(logfmt1(LOG_S("url", "/ping?x_cg_pro_api_key=CG-PRO")),
                        "url=\"/ping?x_cg_pro_api_key=********\"");
    assert_string_equal(logfmt1(LOG_S("s", "api_key=zzz yyy")), "s=\"api_key=******** yyy\"");
    assert_string_equal(logfmt1(LOG_S("s", "API_KEY=zzz")), "s=\"API_KEY=********\"");
    assert_string_equal(logfmt1(LOG_S("s", "header x-cg-pro-api-key: CG-xyz\r\nnext")),
                        "s=\"header x-cg-pro-api-key: ********\\r\\nnext\"");
    assert_string_equal(logfmt1(LOG_S("s", "X-Cg-Demo-Api-Key:CG-q")),
                        "s=X-Cg-Demo-Api-Key:********");
    /* Ends at a quote; empty values are left alone. */
    assert_string_equal(json1(LOG_S("s", "{\"u\":\"?api_key=k1\",\"v\":1}")),
                        "\"{\\\"u\\\":\\\"?api_key=********\\\",\\\"v\\\":1}\"");
    assert_string_equal(logfmt1(LOG_S("s", "api_key=&x=1")), "s=\"api_key=&x=1\"");
    assert_string_equal(logfmt1(LOG_S("s", "my_api_key")), "s=my_api_key");
}

static void test_mask_buffer(void **state)
{
    (void)state;
    char buf[64];
    snprintf(buf, sizeof(buf), "a hunter2 b");
    assert_int_equal(log_mask_secrets(buf, strlen(buf), sizeof(buf)), strlen(buf));
    assert_string_equal(buf, "a hunter2 b"); /* nothing registered yet */

    log_add_secret("hunter2");
    size_t n = log_mask_secrets(buf, strlen(buf), sizeof(buf));
    assert_string_equal(buf, "a ******** b");
    assert_int_equal(n, strlen("a ******** b"));

    snprintf(buf, sizeof(buf), "GET /x?x_cg_demo_api_key=CG-1&y=2 HTTP/1.1");
    n = log_mask_secrets(buf, strlen(buf), sizeof(buf));
    assert_string_equal(buf, "GET /x?x_cg_demo_api_key=********&y=2 HTTP/1.1");

    /* Growth past cap: the tail is cut, and a mask is written whole or not at all. */
    log_add_secret("pw");
    snprintf(buf, sizeof(buf), "pw pw pw");
    n = log_mask_secrets(buf, strlen(buf), 16);
    assert_string_equal(buf, "******** ");
    assert_int_equal(n, 9);
    assert_int_equal(log_mask_secrets(buf, 0, 0), 0);
}

/* Issue 12, finding 6: an API error body of 210 'A's and the key, cut to 256 bytes before the
 * key was masked, showed 28 of its 31 characters. Any run of LOG_SECRET_FRAGMENT_MIN or more
 * of a secret's characters is masked, wherever it is and however the text was cut. */
static void test_secret_fragments(void **state)
{
    (void)state;
    static const char key[] = "CG-SuperSecretKey1234567890abcd";
    char body[512], buf[1024];
    int w =
        snprintf(body, sizeof(body), "Invalid API key %.*s %s", 210,
                 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                 key);
    assert_int_equal(w, 16 + 210 + 1 + 31);
    log_add_secret(key);

    /* The text as the old code cut it (255 bytes): 28 characters of the key at the end. */
    snprintf(buf, sizeof(buf), "%.255s", body);
    assert_non_null(strstr(buf, "CG-SuperSecretKey1234567890"));
    size_t n = log_mask_secrets(buf, strlen(buf), sizeof(buf));
    assert_int_equal(n, 16 + 210 + 1 + 8);
    assert_string_equal(buf + 16 + 210, " ********");

    /* Whole, in the middle, at the start of a cut text; and in a log line either format. */
    struct {
        const char *in, *out;
    } cases[] = {
        {"k=CG-SuperSecretKey1234567890abcd!", "k=********!"},
        {"x Secret-Key12 y", "x Secret-Key12 y"}, /* 11 of its characters, not in one run */
        {"x SecretKey12 y", "x ******** y"},
        {"7890abcd tail", "******** tail"},
        {"CG-Supe ok", "CG-Supe ok"}, /* 7: too short to matter */
        {"CG-Super", "********"},     /* 8 at the end */
        {"CG-SuperCG-Super", "****************"},
        {"1234567", "1234567"},
        {"12345678", "********"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(buf, sizeof(buf), "%s", cases[i].in);
        log_mask_secrets(buf, strlen(buf), sizeof(buf));
        if (strcmp(buf, cases[i].out) != 0)
            fail_msg("masking \"%s\": got \"%s\", want \"%s\"", cases[i].in, buf, cases[i].out);
    }
    snprintf(buf, sizeof(buf), "%.255s", body);
    assert_string_equal(logfmt1(LOG_S("error", buf)) + 7 + 16 + 210, " ********\"");
    const char *j = json1(LOG_S("error", buf));
    assert_null(strstr(j, "Key12"));
    assert_non_null(strstr(j, "A ********\""));
    assert_string_equal(logfmt1(LOG_S("e", "ab1234567890abcdXY")), "e=ab********XY");

    /* A secret shorter than the rule is masked whole only. */
    log_add_secret("pw4x");
    assert_string_equal(logfmt1(LOG_S("s", "pw4 pw4x")), "s=\"pw4 ********\"");
}

/* ---- cutting long lines -----------------------------------------------------------------------
 */

static void test_truncation(void **state)
{
    (void)state;
    static char big[3 * LOG_LINE_MAX];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    struct log_field f[] = {LOG_S("v", big), LOG_U("after", 1), LOG_END};

    const char *s = fmt(LOG_INFO, LOG_FORMAT_TEXT, false, "m", f);
    size_t n = strlen(s);
    assert_true(n <= LOG_LINE_MAX && n > LOG_LINE_MAX - 64);
    assert_string_equal(s + n - 4, "...\n");
    assert_null(strstr(s, "after="));

    memset(big, ' ', 10);
    s = fmt(LOG_INFO, LOG_FORMAT_TEXT, false, "m", f);
    n = strlen(s);
    assert_string_equal(s + n - 5, "...\"\n");

    s = fmt(LOG_INFO, LOG_FORMAT_JSON, false, "m", f);
    n = strlen(s);
    assert_true(n <= LOG_LINE_MAX);
    assert_string_equal(s + n - 23, "...\",\"truncated\":true}\n");
    json_error_t jerr;
    json_t *j = json_loads(s, 0, &jerr);
    if (!j)
        fail_msg("cut JSON is not JSON: %s", jerr.text);
    assert_true(json_is_true(json_object_get(j, "truncated")));
    json_decref(j);

    /* Escapes and UTF-8 sequences are never split. */
    static char ctl[LOG_LINE_MAX];
    memset(ctl, 1, sizeof(ctl) - 1);
    ctl[sizeof(ctl) - 1] = '\0';
    static char utf[2 * LOG_LINE_MAX + 1];
    for (size_t i = 0; i + 2 < sizeof(utf); i += 2)
        memcpy(utf + i, "\xc3\xa9", 2);
    utf[sizeof(utf) - 1] = '\0';
    static char secret_run[2 * LOG_LINE_MAX];
    size_t off = 0;
    while (off + 7 < sizeof(secret_run)) {
        memcpy(secret_run + off, "s3cr3t ", 7);
        off += 7;
    }
    secret_run[off] = '\0';
    log_add_secret("s3cr3t");
    const char *vals[] = {ctl, utf, secret_run};
    for (size_t k = 0; k < 3; k++) {
        struct log_field g[] = {LOG_S("v", vals[k]), LOG_END};
        s = fmt(LOG_INFO, LOG_FORMAT_JSON, false, "m", g);
        j = json_loads(s, 0, &jerr);
        if (!j)
            fail_msg("value %zu: cut JSON is not JSON: %s", k, jerr.text);
        json_decref(j);
        assert_null(strstr(s, "s3cr"));
        s = fmt(LOG_INFO, LOG_FORMAT_TEXT, false, "m", g);
        assert_null(strstr(s, "s3cr"));
        assert_int_equal(s[strlen(s) - 1], '\n');
    }

    /* Many fields: cut at a field boundary, still valid JSON. */
    static char mid[301];
    memset(mid, 'b', 300);
    struct log_field many[41];
    for (int i = 0; i < 40; i++)
        many[i] = LOG_S("field", mid);
    many[40] = LOG_END;
    s = fmt(LOG_INFO, LOG_FORMAT_JSON, false, "m", many);
    j = json_loads(s, 0, &jerr);
    if (!j)
        fail_msg("cut JSON is not JSON: %s", jerr.text);
    json_decref(j);

    /* Only numbers (written whole): the cut falls between fields, where a JSON line has no
     * place for "..." (found by fuzzing). */
    static struct log_field nums[801];
    for (int i = 0; i < 800; i++)
        nums[i] = LOG_U("number", 1234567);
    nums[800] = LOG_END;
    s = fmt(LOG_INFO, LOG_FORMAT_JSON, false, "m", nums);
    n = strlen(s);
    assert_string_equal(s + n - 35, "\"number\":1234567,\"truncated\":true}\n");
    j = json_loads(s, 0, &jerr);
    if (!j)
        fail_msg("cut JSON is not JSON: %s", jerr.text);
    json_decref(j);
    s = fmt(LOG_INFO, LOG_FORMAT_TEXT, false, "m", nums);
    n = strlen(s);
    assert_string_equal(s + n - 19, " number=1234567...\n");

    /* A tiny buffer still gets a terminated line. */
    char small[48];
    n = log_format_line(small, sizeof(small), LOG_INFO, LOG_FORMAT_TEXT, false, T0, "m", f);
    assert_true(n < sizeof(small));
    assert_int_equal(small[n - 1], '\n');
    assert_int_equal(log_format_line(small, 0, LOG_INFO, LOG_FORMAT_TEXT, false, T0, "m", f), 0);
}

/* ---- threads ------------------------------------------------------------------------------ */

#define THREADS 4
#define LINES   400

static void *writer(void *arg)
{
    int t = (int)(intptr_t)arg;
    char pad[201];
    memset(pad, 'x', 200);
    pad[200] = '\0';
    for (int i = 0; i < LINES; i++)
        log_info("worker line", LOG_I("t", t), LOG_I("seq", i), LOG_S("pad", pad),
                 LOG_S("tok", "tok-SECRET-1"));
    return NULL;
}

static void *registrar(void *arg)
{
    (void)arg;
    char s[32];
    for (int i = 0; i < 200; i++) {
        snprintf(s, sizeof(s), "other-%d", i);
        log_add_secret(s);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    char path[] = "/tmp/test_log.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    int afd = open(path, O_WRONLY | O_APPEND);
    assert_true(afd >= 0);
    log_add_secret("SECRET-1");
    unsetenv("JOURNAL_STREAM");
    log_setup(LOG_INFO, LOG_FORMAT_TEXT);
    log_set_fd(afd);

    pthread_t th[THREADS + 1];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, writer, (void *)(intptr_t)i), 0);
    assert_int_equal(pthread_create(&th[THREADS], NULL, registrar, NULL), 0);
    for (int i = 0; i <= THREADS; i++)
        pthread_join(th[i], NULL);
    log_set_fd(2);
    close(afd);

    FILE *f = fdopen(fd, "r");
    assert_non_null(f);
    char buf[1024];
    int seen[THREADS][LINES] = {{0}};
    int total = 0;
    while (fgets(buf, sizeof(buf), f)) {
        int t = -1, seq = -1;
        char want[1024];
        assert_memory_equal(buf, "ts=", 3);
        assert_int_equal(sscanf(buf + 28, "level=info msg=\"worker line\" t=%d seq=%d", &t, &seq),
                         2);
        assert_true(t >= 0 && t < THREADS && seq >= 0 && seq < LINES);
        /* The whole line, exactly: nothing interleaved, the secret masked. */
        snprintf(want, sizeof(want),
                 "level=info msg=\"worker line\" t=%d seq=%d pad=%0200d tok=tok-********\n", t, seq,
                 0);
        for (char *z = strstr(want, "pad=") + 4; *z == '0'; z++)
            *z = 'x';
        assert_string_equal(buf + 28, want);
        seen[t][seq]++;
        total++;
    }
    fclose(f);
    unlink(path);
    assert_int_equal(total, THREADS * LINES);
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < LINES; i++)
            assert_int_equal(seen[t][i], 1);
}

/* One line per interval, and the next one that goes out says how many were held back. */
static void test_ratelimit(void **state)
{
    (void)state;
    struct log_ratelimit rl = {0};
    uint64_t held = 99;
    assert_true(log_ratelimit(&rl, 1000, 60000, &held));
    assert_int_equal(held, 0);
    for (int i = 0; i < 25; i++)
        assert_false(log_ratelimit(&rl, 1000 + (uint64_t)i * 2000, 60000, &held));
    assert_false(log_ratelimit(&rl, 60999, 60000, &held));
    assert_true(log_ratelimit(&rl, 61000, 60000, &held));
    assert_int_equal(held, 26);
    assert_false(log_ratelimit(&rl, 61001, 60000, &held));
    /* zeroed (a recovery): the next line goes out at once, with nothing held */
    memset(&rl, 0, sizeof(rl));
    assert_true(log_ratelimit(&rl, 61002, 60000, &held));
    assert_int_equal(held, 0);
    /* time 0 is a time like any other */
    memset(&rl, 0, sizeof(rl));
    assert_true(log_ratelimit(&rl, 0, 10, &held));
    assert_false(log_ratelimit(&rl, 5, 10, &held));
}

/* Warn and error lines are kept for the status page whatever the level, masked, newest first,
 * at most LOG_RECENT_MAX; info lines are not. */
static void test_recent(void **state)
{
    (void)state;
    int fd = open("/dev/null", O_WRONLY);
    assert_true(fd >= 0);
    log_set_fd(fd);
    log_setup(LOG_ERROR, LOG_FORMAT_JSON);
    log_recent_clear();
    log_add_secret("sup3rs3cr3tkey");
    log_info("not kept");
    log_warn("request failing", LOG_S("error", "bad key sup3rs3cr3tkey"), LOG_U("n", 1));
    log_error("job finished", LOG_S("status", "failed"));
    struct log_recent out[LOG_RECENT_MAX];
    size_t n = log_recent(out, LOG_RECENT_MAX);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].level, LOG_ERROR);
    assert_string_equal(out[0].line, "level=error msg=\"job finished\" status=failed");
    assert_int_equal(out[1].level, LOG_WARN);
    assert_string_equal(out[1].line,
                        "level=warn msg=\"request failing\" error=\"bad key ********\" n=1");
    assert_true(out[0].wall_ms > 0);
    for (int i = 0; i < 30; i++)
        log_warn("storm", LOG_I("i", i));
    n = log_recent(out, LOG_RECENT_MAX);
    assert_int_equal(n, LOG_RECENT_MAX);
    assert_string_equal(out[0].line, "level=warn msg=storm i=29");
    assert_string_equal(out[LOG_RECENT_MAX - 1].line, "level=warn msg=storm i=10");
    assert_int_equal(log_recent(out, 3), 3);
    log_recent_clear();
    assert_int_equal(log_recent(out, LOG_RECENT_MAX), 0);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_logfmt_line, teardown),
        cmocka_unit_test_teardown(test_logfmt_quoting, teardown),
        cmocka_unit_test_teardown(test_numbers, teardown),
        cmocka_unit_test_teardown(test_json_line, teardown),
        cmocka_unit_test_teardown(test_json_escaping, teardown),
        cmocka_unit_test_teardown(test_journal_prefix, teardown),
        cmocka_unit_test_teardown(test_level_filter_and_emit, teardown),
        cmocka_unit_test_teardown(test_registered_secrets, teardown),
        cmocka_unit_test_teardown(test_key_parameters, teardown),
        cmocka_unit_test_teardown(test_mask_buffer, teardown),
        cmocka_unit_test_teardown(test_secret_fragments, teardown),
        cmocka_unit_test_teardown(test_truncation, teardown),
        cmocka_unit_test_teardown(test_threads, teardown),
        cmocka_unit_test_teardown(test_ratelimit, teardown),
        cmocka_unit_test_teardown(test_recent, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
