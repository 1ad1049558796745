"""CLI: evaluate commands."""
