"""`python -m edgeae ...` = the `edgeae` command (for machines where the package is on PYTHONPATH, not installed)."""

from edgeae.cli import main

if __name__ == "__main__":
    main()
