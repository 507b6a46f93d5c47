# Generates a C source that carries every SQL migration inside the binary.
#
#   cmake -DLIST=<file listing sql/*.sql, one path a line> -DOUT=<migrations.c> -P embed_migrations.cmake
#
# Each migration becomes a byte array holding the file's exact bytes plus a terminating NUL,
# so its text (and the SHA-256 that db.c records) is the same whether the daemon reads the
# file or uses the built-in copy. The files are listed by the top-level CMakeLists.txt at
# configure time (sorted by name); db.c orders them by version as it does files. Only CMake
# runs here: no compiler, no xxd. The output appears whole (written aside, then renamed).
cmake_minimum_required(VERSION 3.18)

if(NOT DEFINED LIST OR NOT DEFINED OUT)
  message(FATAL_ERROR "embed_migrations.cmake: pass -DLIST=... -DOUT=...")
endif()
file(STRINGS "${LIST}" files)
list(SORT files)
if(NOT files)
  message(FATAL_ERROR "embed_migrations.cmake: no sql/*.sql migration found")
endif()

set(arrays "")
set(entries "")
set(i 0)
foreach(path IN LISTS files)
  get_filename_component(name "${path}" NAME)
  if(NOT name MATCHES "^[0-9]+_[A-Za-z0-9_-]+\\.sql$")
    message(FATAL_ERROR "${path}: migration files are named NNN_name.sql")
  endif()
  file(READ "${path}" hex HEX)
  string(LENGTH "${hex}" nhex)
  math(EXPR len "${nhex} / 2")
  # Sixteen bytes a line: "0x2d, 0x2d, ...".
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1, " bytes "${hex}")
  string(REPEAT "0x[0-9a-f][0-9a-f], " 16 line) # CMake's regex has no {16}
  string(REGEX REPLACE "(${line})" "\\1\n    " bytes "${bytes}")
  string(REPLACE ", \n" ",\n" bytes "${bytes}")
  string(APPEND arrays "/* ${name} */\nstatic const unsigned char m${i}[] = {\n    ${bytes}0x00};\n\n")
  string(APPEND entries "    {\"${name}\", (const char *)m${i}, ${len}},\n")
  math(EXPR i "${i} + 1")
endforeach()

set(text "/* Generated from the sql/ directory by cmake/embed_migrations.cmake at build time: do not edit. */
#include \"coingest/db.h\"

${arrays}static const struct db_migration list[] = {
${entries}};

const struct db_migration *db_builtin_migrations(size_t *n)
{
    *n = sizeof(list) / sizeof(list[0]);
    return list;
}
")
file(WRITE "${OUT}.tmp" "${text}")
file(RENAME "${OUT}.tmp" "${OUT}")
