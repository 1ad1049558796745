"""CLI: train commands."""
