// Run events (shared/events.py): an Event Grid custom topic users subscribe Logic Apps, Teams, email or their own
// functions to, and, when webhooks are configured, a key vault holding their signing secret. The topic takes
// CloudEvents 1.0 (what the app publishes with azure-eventgrid's EventGridPublisherClient) and has local (SAS key)
// auth off: the app publishes with its identity, which holds "EventGrid Data Sender" on the topic only.
// Learn: "Microsoft.EventGrid topics" (inputSchema CloudEventSchemaV1_0, disableLocalAuth) and "Authenticate
// publishing clients using Microsoft Entra ID" (EventGrid Data Sender); "Use Key Vault references as app
// settings" (a user-assigned identity needs the site's keyVaultReferenceIdentity and Key Vault Secrets User).
param topicName string
param keyVaultName string
param location string
param tags object
param appPrincipalId string
@secure()
@description('NOTIFY_WEBHOOK_SECRET (whsec_...); empty: no webhooks, no key vault.')
param webhookSecret string = ''

var secretName = 'notify-webhook-secret'
var storeSecret = !empty(webhookSecret)

// Built-in role definition ids (Learn: "Azure built-in roles", Integration and Security).
var roles = {
  eventGridDataSender: 'd5a91429-5739-47e2-a06b-3470a27159e7' // EventGrid Data Sender
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
}

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  name: topicName
  location: location
  tags: tags
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

// App identity -> EventGrid Data Sender on the run-events topic: publish each run event (EVENTGRID_TOPIC_ENDPOINT).
resource appEventSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, appPrincipalId, roles.eventGridDataSender)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventGridDataSender)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = if (storeSecret) {
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
  }

  resource secret 'secrets' = {
    name: secretName
    properties: {
      value: webhookSecret
      contentType: 'Standard Webhooks signing secret (whsec_)'
    }
  }
}

// App identity -> Key Vault Secrets User on the vault: resolve NOTIFY_WEBHOOK_SECRET's Key Vault reference.
resource appSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (storeSecret) {
  name: guid(vault.id, appPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output topicName string = topic.name
output topicEndpoint string = topic.properties.endpoint
// A versionless reference: the app picks up a rotated secret (Key Vault references re-read within a day).
output webhookSecretSetting string = storeSecret ? '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${secretName})' : ''
