"""Model registries: where model versions and their configuration come from."""
