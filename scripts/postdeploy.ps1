# azd postdeploy hook (Windows): the same as scripts/postdeploy.sh. Creates or updates the two Event Grid
# subscriptions that need the Function App's system keys; idempotent.
$ErrorActionPreference = 'Stop'

if (-not (Get-Command az -ErrorAction SilentlyContinue)) { throw 'postdeploy: the Azure CLI (az) is needed' }

# azd passes its environment's values to hooks; outside azd, read them from azd itself.
if (-not $env:AZURE_FUNCTION_APP_NAME -and (Get-Command azd -ErrorAction SilentlyContinue)) {
  foreach ($line in (& azd env get-values)) {
    if ($line -match '^([^=]+)=(.*)$') {
      [Environment]::SetEnvironmentVariable($matches[1], ($matches[2] -replace '^"|"$'))
    }
  }
}
foreach ($name in 'RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'SERVICE_API_BASE_URL', 'STORAGE_SYSTEM_TOPIC_NAME',
                  'TRAINING_CONTAINER', 'ML_RESOURCE_GROUP', 'ML_SYSTEM_TOPIC_NAME', 'APP_ID') {
  if (-not [Environment]::GetEnvironmentVariable($name)) { throw "postdeploy: $name is not set (run through azd up / azd deploy)" }
}

function Get-SystemKey([string]$KeyName) {
  for ($attempt = 0; $attempt -lt 30; $attempt++) {
    $key = az functionapp keys list -g $env:RESOURCE_GROUP -n $env:AZURE_FUNCTION_APP_NAME --query "systemKeys.$KeyName" -o tsv 2>$null
    if ($key) { return $key }
    Start-Sleep -Seconds 10
  }
  throw "postdeploy: the app has no $KeyName system key yet; is the code deployed and the host running?"
}

function Set-Subscription([string]$Group, [string]$Topic, [string]$Name, [string[]]$Arguments) {
  az eventgrid system-topic event-subscription show -g $Group --system-topic-name $Topic -n $Name -o none 2>$null
  if ($LASTEXITCODE -eq 0) {
    az eventgrid system-topic event-subscription update -g $Group --system-topic-name $Topic -n $Name @Arguments -o none
    Write-Host "postdeploy: updated Event Grid subscription $Name"
  } else {
    az eventgrid system-topic event-subscription create -g $Group --system-topic-name $Topic -n $Name `
      --endpoint-type webhook --event-delivery-schema eventgridschema @Arguments -o none
    Write-Host "postdeploy: created Event Grid subscription $Name"
  }
  if ($LASTEXITCODE -ne 0) { throw "postdeploy: could not create or update $Name" }
}

$base = $env:SERVICE_API_BASE_URL.TrimEnd('/')
$blobsKey = Get-SystemKey 'blobs_extension'
$eventGridKey = Get-SystemKey 'eventgrid_extension'

# PowerShell hands '&' inside an argument to az intact only when the whole URL is one quoted argument.
Set-Subscription $env:RESOURCE_GROUP $env:STORAGE_SYSTEM_TOPIC_NAME 'ingest-blob-created' @(
  '--endpoint', "`"$base/runtime/webhooks/blobs?functionName=Host.Functions.ingest&code=$blobsKey`"",
  '--included-event-types', 'Microsoft.Storage.BlobCreated',
  '--subject-begins-with', "/blobServices/default/containers/$($env:TRAINING_CONTAINER)/",
  # Only the names that start a run (shared/uploads.py; tests/test_uploads.py checks the two agree).
  '--subject-ends-with', '.jsonl')

Set-Subscription $env:ML_RESOURCE_GROUP $env:ML_SYSTEM_TOPIC_NAME 'job-events' @(
  '--endpoint', "`"$base/runtime/webhooks/EventGrid?functionName=job_events&code=$eventGridKey`"",
  '--included-event-types', 'Microsoft.MachineLearningServices.RunStatusChanged',
  'Microsoft.MachineLearningServices.RunCompleted',
  '--advanced-filter', 'data.runType', 'StringIn', 'azureml.PipelineRun', 'azureml.scriptrun',
  '--advanced-filter', 'data.runTags.chatft-app', 'StringIn', $env:APP_ID)

Write-Host 'postdeploy: done; check the deployment with: chatft doctor --azure'
