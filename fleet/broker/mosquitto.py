"""``fleet broker mosquitto --out DIR``: what a Mosquitto 2.x broker needs to accept only
fleet's devices.

DIR receives::

    mosquitto.conf       a complete configuration (``mosquitto -c DIR/mosquitto.conf``)
    server.key.pem       the broker's TLS key (0600: see "Privileges" below)
    server.cert.pem      its certificate (``server`` profile: serverAuth, the DNS names and IP
                         addresses given), followed by the issuing CA certificate
    ca.pem               the issuing CA then the root: whom client certificates must chain to
    crl.pem              the current CRL (the issuing CA's; a new one is signed)
    acl                  each device (username = its certificate's CN = its device ID) reads
                         and writes only its own topics; the host identity reads Sparkplug
    host/key.pem         the client identity of fleet's MQTT host application (``fleet
    host/cert.pem        watch``): ``host`` profile (clientAuth), CN = the host ID
    host/chain.pem

Every certificate is recorded in the audit trail (``ca.server_cert``, ``ca.host_cert``,
with serial and fingerprint) before it is written: keys are staged in a folder beside DIR,
the events committed, then the certificates written and the folder renamed into place. A
failed run leaves DIR as it was. An existing DIR must be empty, or (with ``force``) hold a
previous output and nothing else: it is then replaced as a whole (new keys and certificates;
the previous certificates stay valid until they expire, as fleet cannot revoke its own
certificates yet).

Privileges: started as root, Mosquitto drops to its ``user`` and reads its files as that
user, the key included when it reloads (SIGHUP). fleet writes keys 0600 for whoever runs it,
so either ``owner`` (as root) hands the key to the broker's user, or the operator runs the
``chown`` the generated configuration names.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlmodel import Session

from fleet import __version__, clock, faults
from fleet.errors import Conflict, InvalidInput
from fleet.files import folder_mode, write_new_file
from fleet.identifiers import validate_device_id
from fleet.pki import ca
from fleet.pki.authority import summarize_ca_certificate
from fleet.pki.bundles import pid_alive
from fleet.pki.crl import crl_number, publish_crl
from fleet.pki.issue import IPAddress, IssuedCertificate, check_issuable, issue_certificate
from fleet.pki.issuer import Issuer
from fleet.pki.keys import cert_pem
from fleet.pki.names import dns_name_problem
from fleet.pki.profiles import Profile, load_profile
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.registry.models import Device
from fleet.views import iso
from fleet.workspace import Passphrase, Workspace, require_passphrase

DEFAULT_PORT = 8883
DEFAULT_HOST_ID = "fleet-watch"
DEFAULT_USER = "mosquitto"
DEFAULT_DATA_DIR = Path("/var/lib/mosquitto")  # Debian's, owned by the mosquitto user
DEFAULT_PID_FILE = Path("/run/mosquitto/mosquitto.pid")  # Debian's
# Messages the broker queues per client while it is away (Mosquitto's default is 1000): the
# watcher's persistent session must absorb a reconnect storm while it restarts.
MAX_QUEUED_MESSAGES = 100_000
COMMON_NAME_MAX = 64  # X.520 ub-common-name

CONF_FILE, ACL_FILE, CA_FILE, CRL_FILE = "mosquitto.conf", "acl", "ca.pem", "crl.pem"
SERVER_KEY_FILE, SERVER_CERT_FILE = "server.key.pem", "server.cert.pem"
HOST_DIR, HOST_KEY_FILE, HOST_CERT_FILE, HOST_CHAIN_FILE = (
    "host",
    "key.pem",
    "cert.pem",
    "chain.pem",
)
OUTPUT_FILES = frozenset({CONF_FILE, ACL_FILE, CA_FILE, CRL_FILE, SERVER_KEY_FILE,
                          SERVER_CERT_FILE, HOST_DIR})  # fmt: skip
HOST_FILES = frozenset({HOST_KEY_FILE, HOST_CERT_FILE, HOST_CHAIN_FILE})
SERVER_PROFILE, HOST_PROFILE = "server", "host"
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_STAGING_RE = r"\.{name}\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]+"


@dataclass(frozen=True)
class BrokerRequest:
    """What ``fleet broker mosquitto`` was asked for (validated by :func:`check_request`)."""

    out_dir: Path
    hostnames: tuple[str, ...] = ()
    ip_addresses: tuple[IPAddress, ...] = ()
    port: int = DEFAULT_PORT
    bind: IPAddress | None = None
    host_id: str = DEFAULT_HOST_ID
    user: str = DEFAULT_USER
    owner: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    pid_file: Path = DEFAULT_PID_FILE
    force: bool = False

    @property
    def server_name(self) -> str:
        """The server certificate's CN: the first name that fits in one."""
        for name in (*self.hostnames, *(str(ip) for ip in self.ip_addresses)):
            if len(name) <= COMMON_NAME_MAX:
                return name
        raise InvalidInput(
            f"every --hostname is longer than {COMMON_NAME_MAX} characters, the limit for "
            "the certificate's CN: add a shorter one (or an --ip)"
        )


@dataclass(frozen=True)
class IssuedFile:
    """A certificate written for the broker: where, and what the audit trail recorded."""

    path: Path
    subject: str
    serial: str
    fingerprint_sha256: str
    not_after: datetime

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape."""
        return {
            "path": str(self.path),
            "subject": self.subject,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint_sha256,
            "not_after": iso(self.not_after),
        }


@dataclass(frozen=True)
class BrokerSetup:
    """What :func:`write_mosquitto` wrote."""

    out_dir: Path
    config: Path
    server: IssuedFile
    host: IssuedFile
    crl_number: int | None
    replaced: bool
    key_owner: str | None
    next_steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (``fleet broker mosquitto --json``)."""
        return {
            "out": str(self.out_dir),
            "config": str(self.config),
            "server": self.server.to_dict(),
            "host": self.host.to_dict(),
            "crl_number": self.crl_number,
            "replaced": self.replaced,
            "key_owner": self.key_owner,
            "next_steps": list(self.next_steps),
        }


def parse_ip_addresses(texts: Sequence[str]) -> tuple[IPAddress, ...]:
    """``--ip`` values as addresses (each once); anything else is refused."""
    found: list[IPAddress] = []
    for text in texts:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise InvalidInput(f"--ip {text!r} is not an IPv4 or IPv6 address") from None
        if address not in found:
            found.append(address)
    return tuple(found)


def check_request(request: BrokerRequest) -> None:
    """Refuse (:class:`InvalidInput`, :class:`Conflict`) a request that cannot succeed,
    before anything is signed or the passphrase asked for."""
    if not request.hostnames and not request.ip_addresses:
        raise InvalidInput("give the broker's name: at least one --hostname or --ip")
    for name in request.hostnames:
        if problem := dns_name_problem(name):
            raise InvalidInput(f"--hostname {name!r} {problem}")
    _ = request.server_name  # raises when no name fits in a CN
    if not 1 <= request.port <= 65535:
        raise InvalidInput(f"--port {request.port} is not a TCP port (1 to 65535)")
    try:
        validate_device_id(request.host_id)
    except InvalidInput as exc:
        raise InvalidInput(f"--host-id: {str(exc).replace('device ID', 'host ID')}") from None
    if not _USER_RE.fullmatch(request.user):
        raise InvalidInput(f"--user {request.user!r} is not a user name")
    for what, path in (("--data-dir", request.data_dir), ("--pid-file", request.pid_file)):
        _conf_path(path, what)
    _conf_path(request.out_dir.absolute(), "--out")
    if request.owner is not None:
        _owner_ids(request.owner)
    _check_out_dir(request.out_dir, request.force)


def write_mosquitto(
    ws: Workspace, request: BrokerRequest, *, passphrase: Passphrase | None = None
) -> BrokerSetup:
    """Write the broker's files into ``request.out_dir`` (see the module's docstring); the
    certificates are recorded in the audit trail before they are written. Example::

        write_mosquitto(ws, BrokerRequest(Path("/etc/mosquitto/fleet"),
                                          hostnames=("broker.example.com",), owner="mosquitto"))
    """
    out_dir = request.out_dir.absolute()
    _remove_stale_staging(out_dir)  # first: a killed run may have set the previous DIR aside
    check_request(request)
    server_profile = load_profile(SERVER_PROFILE, ws.home)
    host_profile = load_profile(HOST_PROFILE, ws.home)
    check_issuable(server_profile, request.server_name, dns_names=request.hostnames)
    check_issuable(host_profile, request.host_id)
    ca.load_ca_certificates(ws.home)  # an uninitialised workspace fails before the prompt
    with read_session(ws.open_registry()) as session:
        if session.get(Device, request.host_id) is not None:
            raise Conflict(
                f"--host-id {request.host_id!r} is a device ID: the device would get the host's "
                "rights on the broker; choose another host ID"
            )
    issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))
    staging = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staging.mkdir(0o700)
    except OSError as exc:
        raise InvalidInput(f"cannot write beside {out_dir}: {exc.strerror}") from exc
    try:
        return _write(ws, request, out_dir, staging, issuer, server_profile, host_profile)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone once renamed into place


def _write(
    ws: Workspace,
    request: BrokerRequest,
    out_dir: Path,
    staging: Path,
    issuer: Issuer,
    server_profile: Profile,
    host_profile: Profile,
) -> BrokerSetup:
    now = clock.now()
    # The CRL first: a registry whose revocations do not add up stops the run before any
    # certificate is signed.
    crl = publish_crl(ws, issuer=issuer)
    server = issue_certificate(
        issuer,
        request.server_name,
        server_profile,
        now=now,
        dns_names=request.hostnames,
        ip_addresses=request.ip_addresses,
    )
    host = issue_certificate(issuer, request.host_id, host_profile, now=now)
    assert server.key_pem is not None and host.key_pem is not None  # generated, not from CSRs
    host_dir = staging / HOST_DIR
    try:
        host_dir.mkdir(0o700)
        write_new_file(staging / SERVER_KEY_FILE, server.key_pem, private=True)
        write_new_file(host_dir / HOST_KEY_FILE, host.key_pem, private=True)
        chain = issuer.chain_pem
        write_new_file(staging / CA_FILE, chain)
        write_new_file(staging / CRL_FILE, crl)
        write_new_file(staging / ACL_FILE, acl_text(request.host_id).encode())
        write_new_file(staging / CONF_FILE, config_text(request, out_dir).encode())
        if request.owner is not None:
            os.chown(staging / SERVER_KEY_FILE, *_owner_ids(request.owner))
    except OSError as exc:
        raise InvalidInput(f"cannot write beside {out_dir}: {exc.strerror}") from exc
    faults.hit("after-stage")
    # Recorded first: the certificates reach the disk only once the audit trail holds them.
    with write_session(ws.open_registry()) as session:
        _record(session, "ca.server_cert", server, SERVER_PROFILE, request, now)
        _record(session, "ca.host_cert", host, HOST_PROFILE, request, now)
        session.flush()
        faults.hit("before-commit")
    faults.hit("after-commit")
    try:
        write_new_file(staging / SERVER_CERT_FILE, server.cert_pem.encode() + cert_pem(issuer.cert))
        write_new_file(host_dir / HOST_CERT_FILE, host.cert_pem.encode())
        write_new_file(host_dir / HOST_CHAIN_FILE, chain)
        os.chmod(host_dir, folder_mode())
        os.chmod(staging, folder_mode())
        faults.hit("after-complete")
        replaced = _publish(staging, out_dir)
    except OSError as exc:
        raise InvalidInput(f"cannot write {out_dir}: {exc.strerror}") from exc
    return BrokerSetup(
        out_dir=out_dir,
        config=out_dir / CONF_FILE,
        server=_issued_file(out_dir / SERVER_CERT_FILE, server),
        host=_issued_file(out_dir / HOST_DIR / HOST_CERT_FILE, host),
        crl_number=crl_number(x509.load_pem_x509_crl(crl)),
        replaced=replaced,
        key_owner=request.owner,
        next_steps=next_steps(request, out_dir),
    )


def _record(
    session: Session,
    action: str,
    issued: IssuedCertificate,
    profile: str,
    request: BrokerRequest,
    now: datetime,
) -> None:
    details: dict[str, Any] = {
        **summarize_ca_certificate(issued.certificate()).to_dict(),
        "profile": profile,
        "out": str(request.out_dir.absolute()),
    }
    if action == "ca.server_cert":
        details["dns"] = list(request.hostnames)
        details["ip"] = [str(ip) for ip in request.ip_addresses]
    target = request.server_name if action == "ca.server_cert" else request.host_id
    audit.append(session, action, target, details, at=now)


def _issued_file(path: Path, issued: IssuedCertificate) -> IssuedFile:
    return IssuedFile(
        path, issued.subject, issued.serial, issued.fingerprint_sha256, issued.not_after
    )


def _publish(staging: Path, out_dir: Path) -> bool:
    """Rename ``staging`` to ``out_dir``; a previous output is set aside, then removed.
    Returns whether one was replaced."""
    try:
        os.rename(staging, out_dir)  # out_dir absent or an empty folder: replaced at once
        return False
    except OSError:
        if not out_dir.is_dir() or out_dir.is_symlink():
            raise
    aside = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(out_dir, aside)
    faults.hit("after-set-aside")
    try:
        os.rename(staging, out_dir)
    except OSError:
        os.rename(aside, out_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return True


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.is_symlink():
        raise InvalidInput(f"--out {out_dir} is a symbolic link: name the folder itself")
    if not out_dir.exists():
        if not out_dir.absolute().parent.is_dir():
            raise InvalidInput(f"--out {out_dir}: its parent folder does not exist")
        return
    if not out_dir.is_dir():
        raise InvalidInput(f"--out {out_dir} exists and is not a folder")
    present = {p.name for p in out_dir.iterdir()}
    if not present:
        return
    unknown = sorted(present - OUTPUT_FILES)
    host_dir = out_dir / HOST_DIR
    if host_dir.is_dir() and not host_dir.is_symlink():
        unknown += sorted(
            f"{HOST_DIR}/{p.name}" for p in host_dir.iterdir() if p.name not in HOST_FILES
        )
    if not force:
        raise Conflict(
            f"{out_dir} is not empty; --force replaces a previous `fleet broker mosquitto` "
            "output (new keys and certificates)"
        )
    if unknown:
        raise Conflict(
            f"{out_dir} holds files fleet did not write there ({', '.join(unknown[:5])}); "
            "--force replaces only a previous output: move them away"
        )


def _remove_stale_staging(out_dir: Path) -> None:
    """Clear what killed runs left beside ``out_dir``: staged files nothing was published
    with are removed; a set-aside previous output is removed once a replacement is in
    place, and put back if there is none (killed between the two renames)."""
    pattern = re.compile(_STAGING_RE.format(name=re.escape(out_dir.name)))
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        stale = match is not None and not pid_alive(int(match["pid"]))
        if not stale or not entry.is_dir() or entry.is_symlink():
            continue
        if ".old-" in entry.name and not os.path.lexists(out_dir):
            os.rename(entry, out_dir)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def _conf_path(path: Path, what: str) -> str:
    """``path`` as it goes into mosquitto.conf: absolute, one line, no surrounding blanks."""
    text = str(path)
    if not path.is_absolute():
        raise InvalidInput(f"{what} {text!r} must be an absolute path")
    if not text.isprintable() or text != text.strip() or "\t" in text:
        raise InvalidInput(f"{what} {text!r}: Mosquitto cannot read such a path from its config")
    return text


def _owner_ids(owner: str) -> tuple[int, int]:
    if not _USER_RE.fullmatch(owner):
        raise InvalidInput(f"--owner {owner!r} is not a user name")
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise InvalidInput(f"--owner {owner!r}: no such user on this machine") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise InvalidInput(f"--owner {owner!r}: only root can give a file to another user")
    return entry.pw_uid, entry.pw_gid


# --- the generated files ----------------------------------------------------------------------


def acl_text(host_id: str) -> str:
    """The ACL: devices under their own topics, the host identity reading Sparkplug."""
    return f"""\
# Mosquitto ACL written by `fleet broker mosquitto` (fleet {__version__}).
# The broker takes each client's certificate CN as its username (use_identity_as_username):
# for a device, its fleet device ID (%u below). Patterns apply to every client.

# A device reads and writes only its own topics: fleet/<id>/... (the last-will convention
# fleet/<id>/status, "online"/"offline", retained) and its Sparkplug B edge node topics
# spBv1.0/<group>/<type>/<id>[/<device>].
pattern readwrite fleet/%u/#
pattern readwrite spBv1.0/+/+/%u
pattern readwrite spBv1.0/+/+/%u/#

# Every client may read the primary host's STATE, which Sparkplug 3.0 edge nodes wait for
# before their birth. (A pattern without %u applies to all: Mosquitto warns, as intended.)
pattern read spBv1.0/STATE/+

# fleet's MQTT host application (`fleet watch`, the `host` certificate, CN {host_id}): reads
# every Sparkplug message and the devices' status topics, publishes its own STATE.
user {host_id}
topic read spBv1.0/#
topic read fleet/+/status
topic readwrite spBv1.0/STATE/{host_id}
"""


def config_text(request: BrokerRequest, out_dir: Path) -> str:
    """mosquitto.conf naming the files in ``out_dir`` (absolute paths)."""
    folder = _conf_path(out_dir, "--out")
    key = f"{folder}/{SERVER_KEY_FILE}"
    data_dir = _conf_path(request.data_dir, "--data-dir").rstrip("/") + "/"
    bind = f" {request.bind}" if request.bind is not None else ""
    chown = (
        f"#   (done: fleet gave it to {request.owner or request.user})"
        if request.owner or _owns_keys(request.user)
        else f"#     chown {request.user} {key}\n"
        f"#   (or run `fleet broker mosquitto --owner {request.user}` as root)"
    )
    return f"""\
# Mosquitto 2.x configuration written by `fleet broker mosquitto` (fleet {__version__}).
# Start it with:  mosquitto -c {folder}/{CONF_FILE}
# (Debian's service reads /etc/mosquitto/mosquitto.conf: link this file there; its pid_file,
# persistence_location and user are Debian's unless fleet was told otherwise.)
#
# Only clients with a certificate from fleet's issuing CA that is not on fleet's CRL get in.
# Each is known by its certificate's CN (a device ID), and the ACL keeps it to its own topics.
#
# Privileges: started as root, Mosquitto drops to `user` and then reads these files as that
# user: the key again at every reload. fleet writes keys 0600 for whoever ran it, so the key
# must belong to {request.user}:
{chown}
# The other files are world-readable; {folder} must be searchable by {request.user}.
#
# The CRL: Mosquitto refuses EVERY client once crl.pem's next update has passed (saying
# "certificate expired"), and fleet's CRLs last 7 days. Re-issue it when due, hourly from cron:
#     fleet ca crl --out {folder}/{CRL_FILE} --if-due --within 24h --reload-pid {request.pid_file}
# SIGHUP makes Mosquitto re-read the CRL (and the ACL and certificates). Connections already
# open are NOT dropped: a device revoked since keeps its session until it reconnects; restart
# the broker to cut it off at once.

per_listener_settings false
user {request.user}
pid_file {_conf_path(request.pid_file, "--pid-file")}

# Persistent sessions (the watcher's, QoS 1) survive a broker restart.
persistence true
persistence_location {data_dir}
max_queued_messages {MAX_QUEUED_MESSAGES}

allow_anonymous false
acl_file {folder}/{ACL_FILE}

listener {request.port}{bind}
certfile {folder}/{SERVER_CERT_FILE}
keyfile {key}
cafile {folder}/{CA_FILE}
crlfile {folder}/{CRL_FILE}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
"""


def _owns_keys(user: str) -> bool:
    """Whether ``user`` is who runs fleet, so already owns the keys fleet writes."""
    try:
        return pwd.getpwnam(user).pw_uid == os.geteuid()
    except KeyError:
        return False


def next_steps(request: BrokerRequest, out_dir: Path) -> list[str]:
    """What the operator still has to do (printed by the CLI)."""
    steps = []
    if request.owner is None and not _owns_keys(request.user):
        steps.append(
            f"give the key to the broker's user: chown {request.user} {out_dir / SERVER_KEY_FILE}"
        )
    steps.append(f"start the broker: mosquitto -c {out_dir / CONF_FILE}")
    steps.append(
        f"keep the CRL current (cron, hourly): fleet ca crl --out {out_dir / CRL_FILE} "
        f"--if-due --reload-pid {request.pid_file}"
    )
    return steps
