// The app's user-assigned managed identity, as in the quickstart: it exists before the app, so role
// assignments can be made (and propagate) before the first start.
param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
