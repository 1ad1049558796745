"""CLI: bundle commands."""
