#!/usr/bin/env bash
# azd postdeploy hook: create (or update) the two Event Grid subscriptions, which need the Function App's system
# keys and so can only be made once the code is deployed (as Azure-Samples/functions-quickstart-python-azd-
# eventgrid-blob's post-up script does for its blob trigger). Idempotent: each run leaves the same two
# subscriptions, with the current keys, whatever existed before.
#   ingest-blob-created: storage BlobCreated under TRAINING_CONTAINER -> blobs-extension webhook of `ingest`
#   job-events:          Azure ML RunStatusChanged/RunCompleted of this app's pipeline jobs -> `job_events`
set -euo pipefail

command -v az >/dev/null 2>&1 || { echo "postdeploy: the Azure CLI (az) is needed" >&2; exit 1; }

# azd passes its environment's values to hooks; outside azd, read them from azd itself.
if [ -z "${AZURE_FUNCTION_APP_NAME:-}" ] && command -v azd >/dev/null 2>&1; then
  while IFS='=' read -r key value; do
    value="${value%\"}"; value="${value#\"}"
    export "$key=$value"
  done <<EOF_VALUES
$(azd env get-values)
EOF_VALUES
fi
for name in RESOURCE_GROUP AZURE_FUNCTION_APP_NAME SERVICE_API_BASE_URL STORAGE_SYSTEM_TOPIC_NAME TRAINING_CONTAINER \
            ML_RESOURCE_GROUP ML_SYSTEM_TOPIC_NAME APP_ID; do
  [ -n "${!name:-}" ] || { echo "postdeploy: $name is not set (run through azd up / azd deploy)" >&2; exit 1; }
done

# A system key appears once the host has started with the extension loaded: wait for it (up to ~5 minutes).
system_key() {
  local key="" attempt
  for attempt in $(seq 1 "${POSTDEPLOY_KEY_ATTEMPTS:-30}"); do
    key=$(az functionapp keys list -g "$RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
          --query "systemKeys.$1" -o tsv 2>/dev/null || true)
    [ -n "$key" ] && { printf '%s' "$key"; return 0; }
    sleep "${POSTDEPLOY_KEY_WAIT_SECONDS:-10}"
  done
  echo "postdeploy: the app has no $1 system key yet; is the code deployed and the host running?" >&2
  return 1
}

# Create the subscription, or update it in place (a second run refreshes endpoint, key and filters).
upsert() {  # resource-group system-topic name args...
  local group=$1 topic=$2 sub=$3; shift 3
  if az eventgrid system-topic event-subscription show -g "$group" --system-topic-name "$topic" -n "$sub" \
       -o none 2>/dev/null; then
    az eventgrid system-topic event-subscription update -g "$group" --system-topic-name "$topic" -n "$sub" "$@" -o none
    echo "postdeploy: updated Event Grid subscription $sub"
  else
    az eventgrid system-topic event-subscription create -g "$group" --system-topic-name "$topic" -n "$sub" \
      --endpoint-type webhook --event-delivery-schema eventgridschema "$@" -o none
    echo "postdeploy: created Event Grid subscription $sub"
  fi
}

base="${SERVICE_API_BASE_URL%/}"
blobs_key=$(system_key blobs_extension)
eventgrid_key=$(system_key eventgrid_extension)

# The blob trigger with source=EventGrid runs only on BlobCreated events posted to this webhook (Learn: "Azure
# Blob storage trigger", Event Grid source); the subject filters keep other containers' uploads out and let through
# only the names that start a run (shared/uploads.py: names ending .jsonl, in any case; Event Grid's subject
# filters are case-insensitive by default; tests/test_uploads.py checks the two agree).
upsert "$RESOURCE_GROUP" "$STORAGE_SYSTEM_TOPIC_NAME" ingest-blob-created \
  --endpoint "$base/runtime/webhooks/blobs?functionName=Host.Functions.ingest&code=$blobs_key" \
  --included-event-types Microsoft.Storage.BlobCreated \
  --subject-begins-with "/blobServices/default/containers/$TRAINING_CONTAINER/" \
  --subject-ends-with ".jsonl"

# Only this app's pipeline jobs and evaluation command jobs (runType azureml.scriptrun, the run history's type of a
# command job): step runs (runType azureml.StepRun) and other users' jobs never reach the app.
upsert "$ML_RESOURCE_GROUP" "$ML_SYSTEM_TOPIC_NAME" job-events \
  --endpoint "$base/runtime/webhooks/EventGrid?functionName=job_events&code=$eventgrid_key" \
  --included-event-types Microsoft.MachineLearningServices.RunStatusChanged \
                         Microsoft.MachineLearningServices.RunCompleted \
  --advanced-filter data.runType StringIn azureml.PipelineRun azureml.scriptrun \
  --advanced-filter data.runTags.chatft-app StringIn "$APP_ID"

echo "postdeploy: done; check the deployment with: chatft doctor --azure"
