"""CLI: demo commands."""
