// Role assignments on the app's storage account, Service Bus namespace and Application Insights (the ones on the
// Azure ML workspace are in ml.bicep, which runs in the workspace's resource group). Each names its principal
// and why; the README's "Roles" table lists the same, and tests/test_infra.py keeps them in step.
param storageAccountName string
param runsContainerName string
param serviceBusNamespaceName string
param applicationInsightsName string
param appPrincipalId string
param computePrincipalId string
param workspacePrincipalId string

// Built-in role definition ids (Learn: "Azure built-in roles"; the storage and monitoring ones as in the
// quickstart's rbac.bicep).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1' // Storage Blob Data Reader
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419' // Azure Service Bus Data Owner
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'

    resource runsContainer 'containers' existing = {
      name: runsContainerName
    }
  }
}

resource namespace 'Microsoft.ServiceBus/namespaces@2021-11-01' existing = {
  name: serviceBusNamespaceName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// App identity -> Storage Blob Data Owner on the account: the host's storage (AzureWebJobsStorage: leases,
// the deployment package, blob-trigger receipts) and the app's containers. Functions documents Owner for host
// storage; Contributor is not enough for the blob trigger's leases.
resource appBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// App identity -> Storage Queue Data Contributor: the blob trigger keeps its work and poison queues in host storage.
resource appQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// App identity -> Storage Table Data Contributor: the run table (RUNS_TABLE), read and written with ETags.
resource appTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// App identity -> Azure Service Bus Data Owner on the namespace: send and receive on both queues and their
// dead-letter subqueues; the Functions scale controller also reads queue runtime properties (message counts),
// which Receiver/Sender do not grant (Functions docs: Service Bus trigger, identity-based connections).
resource appServiceBusOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(namespace.id, appPrincipalId, roles.serviceBusDataOwner)
  scope: namespace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// App identity -> Monitoring Metrics Publisher on Application Insights: identity-based telemetry (local auth is
// off), as in the quickstart.
resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Compute identity -> Storage Blob Data Reader on RUNS_CONTAINER only: the fine-tuning job reads train.jsonl and
// test.jsonl through the identity-based datastore; it never writes there.
resource computeRunsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage::blobService::runsContainer.id, computePrincipalId, roles.storageBlobDataReader)
  scope: storage::blobService::runsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: computePrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Workspace identity -> Storage Blob Data Reader on RUNS_CONTAINER only: the datastore is accessed with the
// workspace's identity (serviceDataAccessAuthIdentity) to validate and browse it, and for data previews.
resource workspaceRunsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage::blobService::runsContainer.id, workspacePrincipalId, roles.storageBlobDataReader)
  scope: storage::blobService::runsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: workspacePrincipalId
    principalType: 'ServicePrincipal'
  }
}
