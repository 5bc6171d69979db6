#!/bin/sh
# Run once by the postgres image's entrypoint, on an empty data volume, as the container's
# superuser: creates the roles histdata connects as (see roles.sql.in). The password comes
# from $HISTDATA_DB_PASSWORD, never from a file in the repository.
set -eu
: "${HISTDATA_DB_PASSWORD:?set HISTDATA_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v histdata_password="$HISTDATA_DB_PASSWORD" \
  -f /docker-entrypoint-initdb.d/roles.sql.in
