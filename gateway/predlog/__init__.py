"""The prediction log: every inference with its input, as JSON lines, off the request path."""
