"""Routing: which model version serves a request. Pure logic, no HTTP, no I/O."""
