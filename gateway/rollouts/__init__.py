"""Metric-gated rollouts: shadow first, step the weights, analyse each window, promote or abort (docs/rollouts.md)."""
