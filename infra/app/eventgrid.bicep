// The storage account's Event Grid system topic. Its subscription (BlobCreated in TRAINING_CONTAINER -> the
// blobs-extension webhook of `ingest`) needs the app's blobs_extension system key, which exists only once the
// code is deployed: scripts/postdeploy.sh creates it, as the quickstart's post-up script does.
param storageTopicName string
param storageAccountId string
param location string
param tags object

@description('Name of a system topic the storage account already has (Event Grid allows one per source: Defender for Storage makes one); empty creates one.')
param existingStorageTopicName string = ''

resource storageTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (empty(existingStorageTopicName)) {
  name: storageTopicName
  location: location
  tags: tags
  properties: {
    source: storageAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output storageTopicName string = empty(existingStorageTopicName) ? storageTopic.name : existingStorageTopicName
