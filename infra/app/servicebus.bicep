// Service Bus Standard: the tier with scheduled messages and duplicate detection, both of which the app uses
// (deployment checks are scheduled messages; a run's message id is its run id). Local (SAS) auth is off: the
// app connects with its identity (ServiceBusConnection__fullyQualifiedNamespace).
param name string
param location string
param tags object
param runsQueueName string
param deployQueueName string
param notifyQueueName string
param maxDeliveryCount int

// Handlers finish in seconds (a preflight and a job submission, or one look at a deployment); the host renews
// the lock up to host.json's maxAutoLockRenewalDuration (10 minutes) if one runs long. 2 minutes covers a cold
// start's imports (azure.ai.ml ~1.2 s) with margin; the maximum Service Bus allows is 5 minutes.
var lockDuration = 'PT2M'
// A redelivered message with the same id inside this window is dropped by the broker.
var duplicateWindow = 'PT10M'

resource namespace 'Microsoft.ServiceBus/namespaces@2021-11-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
  }
}

// RUNS_QUEUE: validated runs waiting for `submit`.
resource runsQueue 'Microsoft.ServiceBus/namespaces/queues@2021-11-01' = {
  parent: namespace
  name: runsQueueName
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateWindow
    maxDeliveryCount: maxDeliveryCount
    lockDuration: lockDuration
    deadLetteringOnMessageExpiration: true
  }
}

// DEPLOY_QUEUE: scheduled deployment checks for `deployments`.
resource deployQueue 'Microsoft.ServiceBus/namespaces/queues@2021-11-01' = {
  parent: namespace
  name: deployQueueName
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateWindow
    maxDeliveryCount: maxDeliveryCount
    lockDuration: lockDuration
    deadLetteringOnMessageExpiration: true
  }
}

// NOTIFY_QUEUE: one delivery of a run event to a webhook or the Event Grid topic per message (`notify`); a
// delivery takes at most the 15 s webhook timeout.
resource notifyQueue 'Microsoft.ServiceBus/namespaces/queues@2021-11-01' = {
  parent: namespace
  name: notifyQueueName
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateWindow
    maxDeliveryCount: maxDeliveryCount
    lockDuration: lockDuration
    deadLetteringOnMessageExpiration: true
  }
}

output name string = namespace.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
