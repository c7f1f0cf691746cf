#!/usr/bin/env bash
# A real Airflow 3 on loopback for the DetCurate DAGs: scheduler, DAG processor and API server, with
# PostgreSQL as the metadata database and the LocalExecutor. Triggers `detcurate_pipeline` through the
# REST API (API v2), waits for the run and prints the state of every task, then stops Airflow.
#
#   infra/airflow/run_airflow.sh                      # smoke profile, one run, then stop
#   PROFILE=demo TRACK=true infra/airflow/run_airflow.sh
#   KEEP=1 infra/airflow/run_airflow.sh               # leave Airflow running (UI on http://127.0.0.1:$PORT)
#
# Settings (environment): PGHOST/PGPORT/PGUSER (127.0.0.1, 5432, postgres; trust or ~/.pgpass auth),
# AIRFLOW_DB (detcurate_airflow: a database of its own, created if absent, so Airflow's tables never mix
# with MLflow's), PORT (8788), PROFILE (smoke), SEED (0), TRACK (false: the run does not write to
# MLflow; true: to $MLFLOW_TRACKING_URI), RUN_HOME (outputs/airflow_server), TIMEOUT (seconds, 1500).
# Exit status: 0 when the DAG run succeeded, 1 when it failed or timed out, 2 when Airflow did not start.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${VENV:-$ROOT/.venv}/bin
PGHOST=${PGHOST:-127.0.0.1}; PGPORT=${PGPORT:-5432}; PGUSER=${PGUSER:-postgres}
AIRFLOW_DB=${AIRFLOW_DB:-detcurate_airflow}
PORT=${PORT:-8788}; PROFILE=${PROFILE:-smoke}; SEED=${SEED:-0}; TRACK=${TRACK:-false}
RUN_HOME=${RUN_HOME:-$ROOT/outputs/airflow_server}; TIMEOUT=${TIMEOUT:-1500}
API="http://127.0.0.1:$PORT"
DAG=detcurate_pipeline

pg_isready -q -h "$PGHOST" -p "$PGPORT" || { echo "error: PostgreSQL at $PGHOST:$PGPORT does not answer" >&2; exit 2; }
if ! psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -Atqc "select 1 from pg_database where datname='$AIRFLOW_DB'" postgres | grep -q 1; then
  createdb -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" "$AIRFLOW_DB"
fi

mkdir -p "$RUN_HOME/logs"
export AIRFLOW_HOME=$RUN_HOME
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg://$PGUSER@$PGHOST:$PGPORT/$AIRFLOW_DB"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC="postgresql+psycopg_async://$PGUSER@$PGHOST:$PGPORT/$AIRFLOW_DB"  # psycopg 3, no asyncpg
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/pipelines/airflow
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True     # loopback only: no login
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$PORT
export AIRFLOW__API__BASE_URL=$API
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=$API/execution/
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
export PATH=$BIN:$PATH OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$ROOT"

echo "metadata database: postgresql://$PGHOST:$PGPORT/$AIRFLOW_DB; home: $RUN_HOME"
"$BIN/airflow" db migrate > "$RUN_HOME/logs/migrate.log" 2>&1 || { tail -5 "$RUN_HOME/logs/migrate.log" >&2; exit 2; }

PIDS=()
stop() {
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
if [[ -z "${KEEP:-}" ]]; then trap stop EXIT; fi
for component in api-server scheduler dag-processor; do
  setsid "$BIN/airflow" "$component" > "$RUN_HOME/logs/$component.log" 2>&1 &
  PIDS+=($!)
done
echo "started api-server, scheduler, dag-processor (pids ${PIDS[*]}); logs in $RUN_HOME/logs"

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" > /dev/null 2>&1; do
    if (( SECONDS > deadline )); then echo "error: $what not ready after $((SECONDS))s" >&2; return 1; fi
    sleep 3
  done
}
wait_for 300 "API server $API" curl -sf "$API/api/v2/monitor/health" || exit 2
TOKEN=$(curl -sf "$API/auth/token" | jq -r .access_token)
auth=(-H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json")
wait_for 300 "DAG $DAG in the API" curl -sf "${auth[@]}" "$API/api/v2/dags/$DAG" || exit 2
echo "DAG $DAG parsed and serialised ($(curl -sf "${auth[@]}" "$API/api/v2/importErrors" | jq .total_entries) import errors)"

# runs left queued or running by an earlier invocation would hold the DAG's one active run: fail them
for old in $(curl -sf "${auth[@]}" "$API/api/v2/dags/$DAG/dagRuns?state=queued&state=running" | jq -r '.dag_runs[].dag_run_id'); do
  curl -sf "${auth[@]}" -X PATCH "$API/api/v2/dags/$DAG/dagRuns/$old" -d '{"state": "failed"}' > /dev/null
  echo "marked the earlier run $old failed"
done
curl -sf "${auth[@]}" -X PATCH "$API/api/v2/dags/$DAG" -d '{"is_paused": false}' > /dev/null
WORKDIR=$RUN_HOME/runs/$PROFILE-seed$SEED-$(date +%Y%m%dT%H%M%S)
conf=$(jq -nc --arg p "$PROFILE" --argjson s "$SEED" --arg w "$WORKDIR" --argjson t "$TRACK" \
  '{profile: $p, seed: $s, workdir: $w, track: $t, mode: "local"}')
RUN=$(curl -sf "${auth[@]}" -X POST "$API/api/v2/dags/$DAG/dagRuns" -d "{\"logical_date\": null, \"conf\": $conf}" | jq -r .dag_run_id)
echo "triggered $DAG run $RUN with conf $conf"

start=$SECONDS; state=queued
while [[ $state != success && $state != failed ]]; do
  if (( SECONDS - start > TIMEOUT )); then echo "error: run $RUN still $state after ${TIMEOUT}s" >&2; break; fi
  sleep 10
  state=$(curl -sf "${auth[@]}" "$API/api/v2/dags/$DAG/dagRuns/$RUN" | jq -r .state || echo unknown)
done
echo "run $RUN: $state after $((SECONDS - start)) s"
curl -sf "${auth[@]}" "$API/api/v2/dags/$DAG/dagRuns/$RUN/taskInstances" \
  | jq -r '.task_instances | sort_by(.start_date) | .[] | "  \(.task_id): \(.state) (\(.duration // 0 | floor) s, try \(.try_number))"'
if [[ -f $WORKDIR/report/report.md ]]; then cat "$WORKDIR/report/report.md"; fi
[[ $state == success ]]
