// Flex Consumption Function App (Python 3.11) running as the user-assigned identity; the package is deployed to
// a blob container with that identity. Shape as in the quickstart's processor.bicep (functionAppConfig), written
// against Microsoft.Web 2024-04-01 directly.
param name string
param planName string
param location string
param tags object
param applicationInsightsName string
param storageAccountName string
param deploymentContainerName string
param identityId string
param identityClientId string
param appSettings object
param instanceMemoryMB int = 2048
param maximumInstanceCount int = 40

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

// Settings the platform needs besides the app's own. Flex Consumption refuses FUNCTIONS_WORKER_RUNTIME and
// FUNCTIONS_EXTENSION_VERSION as app settings: the runtime is functionAppConfig.runtime below.
var baseAppSettings = {
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  // Identity-based telemetry (Application Insights has local auth disabled).
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references (NOTIFY_WEBHOOK_SECRET) are resolved with the user-assigned identity, not a system one.
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
    }
  }

  resource settings 'config' = {
    name: 'appsettings'
    properties: union(appSettings, baseAppSettings)
  }
}

output name string = app.name
output baseUrl string = 'https://${app.properties.defaultHostName}'
