"""One host, many processes: a supervisor, N HTTP workers and one engine per device (docs/operations.md)."""
