#!/bin/sh
# memforge process worker: points the checkout's DVC at the team remote (local config only, nothing committed),
# makes sure the work pool exists, then polls it. Environment (set by infra/compose.yaml):
#   PREFECT_API_URL, MLFLOW_TRACKING_URI    the team's servers
#   MEMFORGE_WORK_POOL                      the pool to poll (created as a process pool when missing)
#   MEMFORGE_DVC_REMOTE_URL                 s3://bucket of the DVC remote (empty = leave DVC's remotes alone)
#   AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the object store
set -eu

pool="${MEMFORGE_WORK_POOL:?MEMFORGE_WORK_POOL is not set}"
cd /workspace

if [ -n "${MEMFORGE_DVC_REMOTE_URL:-}" ]; then
    if [ ! -d .dvc ]; then
        echo "memforge-worker: /workspace is not a DVC checkout; mount the repository there (MEMFORGE_WORKSPACE)" >&2
        exit 1
    fi
    dvc remote add --local --default --force team "${MEMFORGE_DVC_REMOTE_URL}"
    dvc remote modify --local team endpointurl "${AWS_ENDPOINT_URL:?AWS_ENDPOINT_URL is not set}"
fi

if ! prefect work-pool inspect "${pool}" >/dev/null 2>&1; then
    prefect work-pool create --type process "${pool}" || prefect work-pool inspect "${pool}" >/dev/null
fi
exec prefect worker start --pool "${pool}" --type process
