/*
 * rowcheck: assertions on the rows a parser put in a batch, by column name (cmocka). Each check
 * fails the test with the row, the column, what was expected and what was found.
 *
 * Thread: the test's thread.
 */
#ifndef COINGEST_TEST_ROWCHECK_H
#define COINGEST_TEST_ROWCHECK_H

#include <stddef.h>
#include <stdint.h>

#include "coingest/batch.h"

/* The value at (row, column name); fails when the column or row does not exist. */
const struct val *cell(const struct batch *b, uint32_t row, const char *col);

void check_null(const struct batch *b, uint32_t row, const char *col);
void check_dbl(const struct batch *b, uint32_t row, const char *col, double want);
void check_int(const struct batch *b, uint32_t row, const char *col, int64_t want);
void check_time(const struct batch *b, uint32_t row, const char *col, int64_t want);
/* Strings and JSON text (type VAL_STR or VAL_JSON), byte-exact (len given, NUL bytes count). */
void check_bytes(const struct batch *b, uint32_t row, const char *col, int type, const char *want,
                 size_t len);
void check_str(const struct batch *b, uint32_t row, const char *col, const char *want);
void check_json(const struct batch *b, uint32_t row, const char *col, const char *want);

/* How many rows hold NULL in `col`. */
unsigned count_null(const struct batch *b, const char *col);

#endif
