"""Drift: a window of the prediction log against a reference data set."""
