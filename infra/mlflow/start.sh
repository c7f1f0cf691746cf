#!/usr/bin/env bash
# Start an MLflow tracking server and model registry like the cluster's (infra/k8s/mlflow.yaml) on
# this machine: PostgreSQL as the backend store, artifacts in a folder served by the server, bound to
# loopback. Runs in the foreground (Ctrl-C stops it); then point DetCurate at it:
#
#   infra/mlflow/start.sh &
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#
# Settings (environment variables, defaults in brackets):
#   DETCURATE_PG_HOST [127.0.0.1]  DETCURATE_PG_PORT [5432]  DETCURATE_PG_USER [postgres]
#   DETCURATE_MLFLOW_DB [detcurate_mlflow]     database of MLflow's tables, created when absent (kept
#                                              apart from other tables on the server, e.g. Airflow's)
#   DETCURATE_MLFLOW_HOST [127.0.0.1]  DETCURATE_MLFLOW_PORT [5000]  DETCURATE_MLFLOW_WORKERS [2]
#   DETCURATE_MLFLOW_ARTIFACTS [<repository>/mlartifacts-server]   artifact folder
#   DETCURATE_MLFLOW_BIN [<repository>/.venv/bin/mlflow, else mlflow on PATH]
# The password, if the server asks for one, comes from PGPASSWORD or ~/.pgpass, as for psql.
# Needs psql and createdb (PostgreSQL's client tools) and the tracking extra (mlflow, psycopg).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pg_host="${DETCURATE_PG_HOST:-127.0.0.1}"
pg_port="${DETCURATE_PG_PORT:-5432}"
pg_user="${DETCURATE_PG_USER:-postgres}"
db="${DETCURATE_MLFLOW_DB:-detcurate_mlflow}"
host="${DETCURATE_MLFLOW_HOST:-127.0.0.1}"
port="${DETCURATE_MLFLOW_PORT:-5000}"
workers="${DETCURATE_MLFLOW_WORKERS:-2}"
artifacts="${DETCURATE_MLFLOW_ARTIFACTS:-$repo/mlartifacts-server}"
mlflow_bin="${DETCURATE_MLFLOW_BIN:-}"
if [ -z "$mlflow_bin" ]; then
    if [ -x "$repo/.venv/bin/mlflow" ]; then mlflow_bin="$repo/.venv/bin/mlflow"; else mlflow_bin=mlflow; fi
fi

fail() { echo "infra/mlflow/start.sh: $*" >&2; exit 2; }
[[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] || fail "DETCURATE_MLFLOW_DB=$db: expected a lower-case SQL name ([a-z_][a-z0-9_]*)"
[[ "$port" =~ ^[0-9]+$ ]] || fail "DETCURATE_MLFLOW_PORT=$port: expected a port number"
command -v "$mlflow_bin" >/dev/null || fail "$mlflow_bin not found (pip install -c constraints.txt -e '.[tracking]')"
for tool in psql createdb; do
    command -v "$tool" >/dev/null || fail "$tool not found (PostgreSQL client tools: apt-get install -y postgresql-client)"
done

url="postgresql://$pg_user@$pg_host:$pg_port/$db"
psql_args=(-h "$pg_host" -p "$pg_port" -U "$pg_user" -X -q -t -A)
if ! exists="$(psql "${psql_args[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'" 2>&1)"; then
    fail "PostgreSQL at postgresql://$pg_user@$pg_host:$pg_port does not answer: $(echo "$exists" | head -n 1)"
fi
if [ "$exists" != "1" ]; then
    # Two starts at once: the second createdb fails with "already exists", which is fine.
    out="$(createdb -h "$pg_host" -p "$pg_port" -U "$pg_user" "$db" 2>&1)" || \
        [[ "$out" == *"already exists"* ]] || fail "cannot create database $db: $out"
fi
mkdir -p "$artifacts"

echo "infra/mlflow/start.sh: MLflow at http://$host:$port (backend store $url, artifacts $artifacts)" >&2
exec "$mlflow_bin" server \
    --backend-store-uri "$url" \
    --artifacts-destination "$artifacts" \
    --host "$host" --port "$port" --workers "$workers"
