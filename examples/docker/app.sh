#!/bin/sh
# A stand-in application: it writes a row every second to a database on
# the mount. Replace it with your own; litefs forwards SIGTERM to it.
set -eu
sqlite3 /litefs/app.db 'CREATE TABLE IF NOT EXISTS beats (at TEXT)'
trap 'exit 0' TERM INT
while :; do
	sqlite3 /litefs/app.db "INSERT INTO beats VALUES (datetime('now'))"
	sleep 1
done
