"""``python -m fleet`` runs the CLI."""

from fleet.cli import main

if __name__ == "__main__":
    main()
