// chatft on Azure: everything `azd up` creates and wires. Laid out like Azure's own azd quickstart for Python
// Functions with an Event-Grid blob trigger (Azure-Samples/functions-quickstart-python-azd-eventgrid-blob:
// azure.yaml + infra/main.bicep + infra/app/*.bicep, a user-assigned identity, a postdeploy hook for the
// subscriptions that need the function's system keys). Resources are declared directly rather than through
// registry (AVM) modules so every property the app depends on is visible here and checked by tests/test_infra.py.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; hashed into every resource name.')
param environmentName string

@minLength(1)
@description('Region of every resource (and of the GPU cluster: pick one with GPU quota).')
@metadata({ azd: { type: 'location' } })
param location string

@description('Resource group to create; empty means rg-<environmentName>.')
param resourceGroupName string = ''

// --- Azure ML ---------------------------------------------------------------------------------------------------
@description('Name of an existing Azure ML workspace to use; empty creates a new one (with its storage, key vault).')
param existingMlWorkspaceName string = ''

@description('Resource group of the existing workspace; empty means the resource group above.')
param existingMlWorkspaceResourceGroup string = ''

@description('GPU VM size of the fine-tuning cluster. It must be in the base model\'s finetune_compute_allow_list.')
param gpuVmSize string = 'Standard_NC24ads_A100_v4'

@minValue(1)
@description('Most nodes the GPU cluster scales out to (it scales in to 0 when idle, costing nothing).')
param gpuMaxNodes int = 1

@description('Name of the GPU cluster (AML_COMPUTE).')
param computeName string = 'gpu-cluster'

@description('Name of the identity-based datastore over RUNS_CONTAINER (AML_DATASTORE).')
param runsDatastoreName string = 'chatft_runs'

@description('Base model in the azureml registry (BASE_MODEL). Phi-3-mini-4k-instruct is archived there.')
param baseModel string = 'Phi-4'

// Phi-4 lists it among its inference computes (azureml-assets). Since June 2026 the registry keeps the allow-lists
// in system metadata, which azure-ai-ml's Model does not expose: with a size set, a missing list is no list.
@description('Instance type of online deployments; empty takes the first current size of the model\'s allow-list.')
param inferenceInstanceType string = 'Standard_NC24ads_A100_v4'

@description('Name of an Event Grid system topic the app storage account already has (one per source); empty creates one.')
param existingStorageTopicName string = ''

@description('Name of an Event Grid system topic the ML workspace already has (one per source); empty creates one.')
param existingMlTopicName string = ''

@description('Also check Azure Monitor request metrics before cleanup deletes an endpoint (adds Monitoring Reader).')
param cleanupCheckMetrics bool = false

// --- Names the app reads (defaults as in shared/config.py) --------------------------------------------------------
param trainingContainerName string = 'training-data'
param runsContainerName string = 'runs'
param runsTableName string = 'runs'
param runsQueueName string = 'runs'
param deployQueueName string = 'deployments'
param notifyQueueName string = 'notifications'

// --- Run events (shared/notifications.py) -------------------------------------------------------------------------
@description('Comma-separated https URLs that receive each run event as a signed webhook (NOTIFY_WEBHOOK_URLS).')
param notifyWebhookUrls string = ''

@secure()
@description('Signing secret of the webhooks, whsec_<base64> (NOTIFY_WEBHOOK_SECRET); kept in a key vault.')
param notifyWebhookSecret string = ''

@description('How long an unaccepted webhook delivery is retried (NOTIFY_RETRY_HOURS).')
param notifyRetryHours string = '24'

@description('Deliveries of a queue message before it is dead-lettered (MAX_DELIVERY_COUNT and the queues\' maxDeliveryCount).')
param maxDeliveryCount int = 10

@description('Application id: tag value marking the endpoints and jobs this app owns (APP_ID); the job-event filter uses it.')
param appId string = 'chatft'

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var functionAppName = 'func-${resourceToken}'
// The Flex Consumption deployment package container (as the quickstart names it: per app, unique).
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
var createMlWorkspace = empty(existingMlWorkspaceName)
var mlWorkspaceName = createMlWorkspace ? 'mlw-${resourceToken}' : existingMlWorkspaceName

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

var mlResourceGroupName = createMlWorkspace || empty(existingMlWorkspaceResourceGroup) ? rg.name : existingMlWorkspaceResourceGroup

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-func-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    trainingContainerName: trainingContainerName
    runsContainerName: runsContainerName
    runsTableName: runsTableName
  }
}

module servicebus 'app/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: 'sb-${resourceToken}'
    location: location
    tags: tags
    runsQueueName: runsQueueName
    deployQueueName: deployQueueName
    notifyQueueName: notifyQueueName
    maxDeliveryCount: maxDeliveryCount
  }
}

module ml 'app/ml.bicep' = {
  name: 'ml'
  scope: resourceGroup(mlResourceGroupName)
  params: {
    createWorkspace: createMlWorkspace
    workspaceName: mlWorkspaceName
    resourceToken: resourceToken
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    computeName: computeName
    gpuVmSize: gpuVmSize
    gpuMaxNodes: gpuMaxNodes
    runsDatastoreName: runsDatastoreName
    runsStorageAccountName: storage.outputs.name
    runsContainerName: runsContainerName
    appPrincipalId: identity.outputs.principalId
    cleanupCheckMetrics: cleanupCheckMetrics
    existingMlTopicName: existingMlTopicName
  }
  dependsOn: [rg]
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    runsContainerName: runsContainerName
    serviceBusNamespaceName: servicebus.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: identity.outputs.principalId
    computePrincipalId: ml.outputs.computePrincipalId
    workspacePrincipalId: ml.outputs.workspacePrincipalId
  }
}

module eventgrid 'app/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    storageTopicName: 'evgt-st-${resourceToken}'
    storageAccountId: storage.outputs.id
    existingStorageTopicName: existingStorageTopicName
    location: location
    tags: tags
  }
}

module notifications 'app/notifications.bicep' = {
  name: 'notifications'
  scope: rg
  params: {
    topicName: 'evgt-runs-${resourceToken}'
    keyVaultName: 'kvn-${resourceToken}'
    location: location
    tags: tags
    appPrincipalId: identity.outputs.principalId
    webhookSecret: notifyWebhookSecret
  }
}

// Every setting the app reads in Azure (shared/config.py SETTINGS) and every %NAME% of functions/: the Functions
// host resolves binding expressions from app settings only, never from Python defaults (azure-webjobs-sdk issues
// 2063, 3070). tests/test_infra.py checks this list against both.
var appSettings = {
  // Identity-based connections with the user-assigned identity: `__credential` and `__clientId` on each
  // (Learn: "Connecting to host storage with an identity"; quickstart processor.bicep). The blob trigger with
  // source=EventGrid needs the blob and queue service URIs.
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  ServiceBusConnection__fullyQualifiedNamespace: servicebus.outputs.fullyQualifiedNamespace
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identity.outputs.clientId
  // DefaultAzureCredential picks the user-assigned identity by this client id (shared/identity.py).
  AZURE_CLIENT_ID: identity.outputs.clientId
  TRAINING_CONTAINER: trainingContainerName
  RUNS_CONTAINER: runsContainerName
  RUNS_TABLE: runsTableName
  RUNS_QUEUE: runsQueueName
  DEPLOY_QUEUE: deployQueueName
  NOTIFY_QUEUE: notifyQueueName
  MESSAGING: 'servicebus'
  ML_BACKEND: 'azureml'
  AZURE_SUBSCRIPTION_ID: subscription().subscriptionId
  AZURE_RESOURCE_GROUP: mlResourceGroupName
  AML_WORKSPACE: mlWorkspaceName
  AML_REGISTRY: 'azureml'
  AML_COMPUTE: computeName
  AML_COMPUTE_GPUS: '0'
  AML_DATASTORE: runsDatastoreName
  AML_PIPELINE_COMPONENT: 'chat_completion_pipeline'
  AML_PIPELINE_COMPONENT_VERSION: '0.0.82'
  AML_EVALUATION_ENVIRONMENT: 'azureml://registries/azureml/environments/acft-hf-nlp-gpu/labels/latest'
  BASE_MODEL: baseModel
  EXPERIMENT_NAME: ''
  INFERENCE_INSTANCE_TYPE: inferenceInstanceType
  INFERENCE_INSTANCE_COUNT: '1'
  DEPLOYMENT_NAME: 'demo'
  APP_ID: appId
  VALIDATION_MAX_INVALID_FRACTION: '0.0'
  VALIDATION_MAX_RECORD_BYTES: '1048576'
  VALIDATION_REPORT_MAX_ISSUES: '100'
  TEST_FRACTION: '0.1'
  TOKENIZER_DIR: ''
  MAX_DELIVERY_COUNT: string(maxDeliveryCount)
  DEPLOY_CHECK_SECONDS: '5'
  DEPLOY_TIMEOUT_MINUTES: '90'
  ENDPOINT_IDLE_HOURS: '24.0'
  CLEANUP_SCHEDULE: '0 0 2 * * *'
  CLEANUP_DRY_RUN: 'false'
  CLEANUP_CHECK_METRICS: string(cleanupCheckMetrics)
  // Reliability settings (timer `reconcile` and the retry window): see shared/config.py.
  RECONCILE_SCHEDULE: '0 */5 * * * *'
  RECONCILE_AFTER_MINUTES: '15'
  RETRY_WINDOW_MINUTES: '60'
  RETRY_BASE_SECONDS: '10'
  MAX_REQUEST_BYTES: '1048576'
  SCORE_TIMEOUT_SECONDS: '90.0'
  EVAL_GATE: 'enforce'
  EVAL_METRIC: 'eval_loss'
  EVAL_MIN_IMPROVEMENT: '0.0'
  EVAL_MIN_RECORDS: '20'
  EVAL_MAX_RECORDS: '500'
  EVAL_SAMPLES: '50'
  EVAL_MAX_NEW_TOKENS: '128'
  // Model lines: a new version takes ROLLOUT_CANARY_PERCENT of the line's traffic for ROLLOUT_CANARY_MINUTES (README
  // "Model lines"); the previous deployment is kept at 0% for ROLLOUT_KEEP_PREVIOUS_HOURS for a rollback.
  ROLLOUT_CANARY_PERCENT: '10'
  ROLLOUT_CANARY_MINUTES: '30.0'
  ROLLOUT_MAX_ERROR_RATE: '0.05'
  ROLLOUT_MIN_REQUESTS: '20'
  ROLLOUT_KEEP_PREVIOUS_HOURS: '24.0'
  // Run events: the topic always, webhooks when URLs are given (the secret as a Key Vault reference, never a value).
  EVENTGRID_TOPIC_ENDPOINT: notifications.outputs.topicEndpoint
  NOTIFY_WEBHOOK_URLS: notifyWebhookUrls
  NOTIFY_WEBHOOK_SECRET: notifications.outputs.webhookSecretSetting
  NOTIFY_RETRY_HOURS: notifyRetryHours
}

module function 'app/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    appSettings: appSettings
  }
  // The app's first start needs its roles on storage and Service Bus (and on the key vault its secret is in).
  dependsOn: [rbac, notifications]
}

// azd keeps these in the environment; the postdeploy hook and `chatft doctor` read them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = function.outputs.name
output SERVICE_API_BASE_URL string = function.outputs.baseUrl
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output TRAINING_CONTAINER string = trainingContainerName
output RUNS_CONTAINER string = runsContainerName
output RUNS_QUEUE string = runsQueueName
output DEPLOY_QUEUE string = deployQueueName
output NOTIFY_QUEUE string = notifyQueueName
output EVENTGRID_TOPIC_NAME string = notifications.outputs.topicName
output EVENTGRID_TOPIC_ENDPOINT string = notifications.outputs.topicEndpoint
output STORAGE_SYSTEM_TOPIC_NAME string = eventgrid.outputs.storageTopicName
output ML_SYSTEM_TOPIC_NAME string = ml.outputs.systemTopicName
output ML_RESOURCE_GROUP string = mlResourceGroupName
output AZURE_SUBSCRIPTION_ID string = subscription().subscriptionId
output AZURE_RESOURCE_GROUP string = mlResourceGroupName
output AML_WORKSPACE string = mlWorkspaceName
output AML_COMPUTE string = computeName
output GPU_VM_SIZE string = gpuVmSize
output ML_LOCATION string = ml.outputs.location
output AML_DATASTORE string = runsDatastoreName
output APP_ID string = appId
output AZURE_CLIENT_ID string = identity.outputs.clientId
output APP_PRINCIPAL_ID string = identity.outputs.principalId
output ServiceBusConnection__fullyQualifiedNamespace string = servicebus.outputs.fullyQualifiedNamespace
