"""The HTTP layer: Starlette routes that translate between HTTP and the gateway core."""
