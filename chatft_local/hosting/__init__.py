"""The local Functions host's parts: indexing the app, invoking functions, one listener per trigger kind, keys.
`chatft_local.host.LocalHost` puts them together."""
