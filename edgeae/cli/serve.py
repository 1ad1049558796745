"""CLI: serve commands."""
