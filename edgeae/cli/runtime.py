"""CLI: runtime commands."""
