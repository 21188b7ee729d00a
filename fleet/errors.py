"""Errors that reach users: each carries a one-line message and a documented exit code."""

from __future__ import annotations


class FleetError(Exception):
    """Base for every error fleet reports to a user. ``str(err)`` is the one-line message."""

    exit_code = 1


class InvalidInput(FleetError):
    """The user gave something fleet refuses: a bad ID, label, CSR, file or option."""

    exit_code = 2


class NotFound(FleetError):
    """A device, certificate or profile that does not exist."""

    exit_code = 3


class Conflict(FleetError):
    """The request clashes with the registry's state (duplicate ID, already revoked...)."""

    exit_code = 4


class RegistryError(FleetError):
    """The workspace or database is missing, unreachable, or at the wrong schema revision."""

    exit_code = 5


class AuthError(FleetError):
    """A secret is missing or wrong (CA passphrase)."""

    exit_code = 6


class IntegrityError(FleetError):
    """The audit trail does not verify."""

    exit_code = 7


# `cloud register` / `cloud sync`: a cloud could not be reached at all (connection refused,
# unknown host); the push stopped at once and its jobs stay queued. Not an exception: the
# command still reports what it did.
CLOUD_UNREACHABLE_EXIT = 9
