"""Dynamic batching: concurrent requests for one version merged into one runtime call."""
