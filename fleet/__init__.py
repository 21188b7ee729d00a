"""fleet: device-fleet provisioning and management.

The package is a library first; :mod:`fleet.cli` is a thin typer layer over it.
"""

__version__ = "0.1.0"
