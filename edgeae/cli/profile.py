"""CLI: profile commands."""
