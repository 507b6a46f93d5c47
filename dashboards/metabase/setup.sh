#!/bin/sh
# dashboards/metabase/setup.sh — first-start setup of the compose stack's Metabase: creates the
# admin user and adds coingest's MariaDB as a data source, through Metabase's own setup API
# (POST /api/setup with the one-time setup token). It runs once in the metabase-setup service
# (curlimages/curl) and does nothing when Metabase is already set up (no setup token).
#
# Environment: MB_URL (default http://metabase:3000), MB_ADMIN_EMAIL (default
# admin@example.com), MB_ADMIN_PASSWORD_FILE (a file holding the admin password), DB_PASSWORD_FILE
# (the database password, the compose secret).
set -eu

url=${MB_URL:-http://metabase:3000}
email=${MB_ADMIN_EMAIL:-admin@example.com}
admin_pw=$(cat "${MB_ADMIN_PASSWORD_FILE:?}")
db_pw=$(cat "${DB_PASSWORD_FILE:?}")

# JSON string escaping for the two passwords (backslash and double quote).
esc() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }

i=0
until curl -fsS "$url/api/health" >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -le 120 ] || { echo "metabase-setup: Metabase did not come up" >&2; exit 1; }
  sleep 5
done

token=$(curl -fsS "$url/api/session/properties" | sed -n 's/.*"setup-token":"\([^"]*\)".*/\1/p')
if [ -z "$token" ]; then
  echo "metabase-setup: Metabase is already set up; nothing to do"
  exit 0
fi

curl -fsS -X POST "$url/api/setup" -H 'Content-Type: application/json' -d @- >/dev/null <<JSON
{
  "token": "$token",
  "user": {"email": "$email", "password": "$(esc "$admin_pw")", "first_name": "coingest",
           "last_name": "admin", "site_name": "coingest"},
  "prefs": {"site_name": "coingest", "allow_tracking": false},
  "database": {"engine": "mysql", "name": "coingest",
               "details": {"host": "mariadb", "port": 3306, "dbname": "coingest",
                           "user": "coingest", "password": "$(esc "$db_pw")", "ssl": false}}
}
JSON
echo "metabase-setup: admin $email created, database coingest added"
