"""The operator console: a static page at ``/console`` that talks to the admin API (docs/console.md)."""
