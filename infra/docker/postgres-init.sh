#!/bin/sh
# Runs once, when the PostgreSQL volume is new (docker-entrypoint-initdb.d): one database for the Prefect server
# and one for the MLflow tracking server and model registry, both owned by POSTGRES_USER.
set -eu
for database in "${PREFECT_DB:?}" "${MLFLOW_DB:?}"; do
    psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname postgres \
        --set db="${database}" --set owner="${POSTGRES_USER}" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
done
