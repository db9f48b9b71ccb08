// Azure ML: a new workspace with its dependencies (or an existing one), the GPU cluster that fine-tunes (0 nodes
// when idle), the identity-based datastore over RUNS_CONTAINER that AML_DATASTORE names, the workspace's Event
// Grid system topic, and the roles on the workspace. Deployed into the workspace's resource group.
param createWorkspace bool
param workspaceName string
param resourceToken string
param location string
param tags object
param applicationInsightsId string
param computeName string
param gpuVmSize string
param gpuMaxNodes int
param runsDatastoreName string
param runsStorageAccountName string
param runsContainerName string
param appPrincipalId string
param cleanupCheckMetrics bool

@description('Name of an Event Grid system topic the workspace already has (Event Grid allows one per source); empty creates one.')
param existingMlTopicName string = ''

// Built-in role definition ids (Learn: "Azure built-in roles").
var roles = {
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121' // AzureML Data Scientist
  monitoringReader: '43d0d8ad-25c7-4714-9337-8ba259a9fe05' // Monitoring Reader
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1' // Storage Blob Data Reader
  reader: 'acdd72a7-3385-48ef-bd42-f606fba81ae7' // Reader
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d' // AcrPull
}

// The workspace's own region (an existing workspace may be elsewhere than the azd region): its compute, datastore
// and system topic go there. ARM's if() evaluates only the branch taken, so the reference runs only for an existing one.
var mlLocation = createWorkspace ? location : workspace.location

// The cluster's user-assigned identity. Learn (azure-ai-docs, how-to-disable-local-auth-storage.md, "Scenarios for
// role assignments"): with shared keys off on the workspace storage, jobs with a model as input or output need a
// user-assigned identity on the compute cluster, with Storage Blob Data Contributor on that storage.
resource computeIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-compute-${resourceToken}'
  location: mlLocation
  tags: tags
}

// The workspace's container registry, so the MLflow no-code deployment's image build does not make one with the
// admin account on (Learn, how-to-identity-based-service-authentication.md). Basic, admin off: pulls use identities.
resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = if (createWorkspace) {
  name: 'cr${resourceToken}'
  location: location
  tags: tags
  sku: { name: 'Basic' }
  properties: { adminUserEnabled: false }
}

// --- A new workspace's dependencies: its own storage (identity-only, like the app's) and key vault (RBAC).
resource mlStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = if (createWorkspace) {
  name: 'stml${resourceToken}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = if (createWorkspace) {
  name: 'kv-${resourceToken}'
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
  }
}

// GA 2025-06-01 defines systemDatastoresAuthMode and containerRegistry (bicep-types-az 1f896de, generated/
// machinelearningservices/microsoft.machinelearningservices/2025-06-01/types.md, WorkspaceProperties).
resource newWorkspace 'Microsoft.MachineLearningServices/workspaces@2025-06-01' = if (createWorkspace) {
  name: workspaceName
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  sku: { name: 'Basic', tier: 'Basic' }
  properties: {
    friendlyName: workspaceName
    storageAccount: mlStorage.id
    keyVault: keyVault.id
    applicationInsights: applicationInsightsId
    containerRegistry: registry.id
    // The workspace's own datastores use its identity: its storage account has shared keys disabled.
    systemDatastoresAuthMode: 'Identity'
    publicNetworkAccess: 'Enabled'
  }
}

// The workspace either way (new or existing): the scope of its role assignments.
resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

// The fine-tuning cluster: min 0 nodes so it costs nothing idle; its own identity reads the run files.
resource compute 'Microsoft.MachineLearningServices/workspaces/computes@2024-10-01' = {
  name: '${workspaceName}/${computeName}'
  location: mlLocation
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${computeIdentity.id}': {} }
  }
  properties: {
    computeType: 'AmlCompute'
    properties: {
      vmSize: gpuVmSize
      vmPriority: 'Dedicated'
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: gpuMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT15M'
      }
    }
  }
  dependsOn: [newWorkspace]
}

// AML_DATASTORE: an identity-based (credential-less) blob datastore over the app's RUNS_CONTAINER, so the job's
// train/test paths (azureml://datastores/<name>/paths/<run_id>/...) resolve to the files `ingest` wrote.
resource runsDatastore 'Microsoft.MachineLearningServices/workspaces/datastores@2024-10-01' = {
  name: '${workspaceName}/${runsDatastoreName}'
  properties: {
    datastoreType: 'AzureBlob'
    accountName: runsStorageAccountName
    containerName: runsContainerName
    endpoint: environment().suffixes.storage
    protocol: 'https'
    credentials: { credentialsType: 'None' }
    serviceDataAccessAuthIdentity: 'WorkspaceSystemAssignedIdentity'
    description: 'chatft run files (RUNS_CONTAINER), accessed by identity'
  }
  dependsOn: [newWorkspace]
}

// Azure ML run events. Its subscription (to `job_events`, with filters for this app's pipeline jobs) needs the
// app's eventgrid_extension system key: scripts/postdeploy.sh creates it.
resource mlTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (empty(existingMlTopicName)) {
  name: 'evgt-ml-${resourceToken}'
  location: mlLocation
  tags: tags
  properties: {
    source: resourceId('Microsoft.MachineLearningServices/workspaces', workspaceName)
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
  dependsOn: [newWorkspace]
}

// App identity -> AzureML Data Scientist on the workspace: submit pipeline jobs, register models, create and
// delete online endpoints and read their keys. Narrower than Contributor: it cannot change the workspace,
// its computes or role assignments.
resource appDataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, resourceGroup().id, workspaceName, appPrincipalId, roles.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureMLDataScientist)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [newWorkspace]
}

// App identity -> Reader on the workspace: azure-ai-ml GETs the workspace (`workspaces/read`) before creating an
// endpoint or a deployment (operations/_online_endpoint_operations.py:228, _online_deployment_operations.py:188),
// and AzureML Data Scientist's `workspaces/*/read` does not match `workspaces/read` (shared/permissions.py).
resource appWorkspaceReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, resourceGroup().id, workspaceName, appPrincipalId, roles.reader)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.reader)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [newWorkspace]
}

// App identity -> Monitoring Reader on the workspace, only with CLEANUP_CHECK_METRICS=true: cleanup reads the
// endpoints' RequestsPerMinute metric (endpoints inherit the workspace scope).
resource appMonitoringReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (cleanupCheckMetrics) {
  name: guid(subscription().id, resourceGroup().id, workspaceName, appPrincipalId, roles.monitoringReader)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringReader)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [newWorkspace]
}

// Compute identity -> Storage Blob Data Contributor on a new workspace's storage: with identity-only datastores
// the job's steps write their outputs (the fine-tuned model) to workspaceblobstore as the cluster's identity.
resource computeWorkspaceStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (createWorkspace) {
  name: guid(subscription().id, resourceGroup().id, 'stml${resourceToken}', computeName, roles.storageBlobDataContributor)
  scope: mlStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: computeIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Compute identity -> AcrPull on the workspace's registry: with the admin account off, the job's images are pulled
// with the cluster's identity (Learn, how-to-identity-based-service-authentication.md).
resource computeAcrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (createWorkspace) {
  name: guid(subscription().id, resourceGroup().id, 'cr${resourceToken}', computeName, roles.acrPull)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
    principalId: computeIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

output computePrincipalId string = computeIdentity.properties.principalId
output workspacePrincipalId string = workspace.identity.principalId
output systemTopicName string = empty(existingMlTopicName) ? mlTopic.name : existingMlTopicName
output location string = mlLocation
