"""A real Mosquitto for tests, configured by ``fleet broker mosquitto``.

:func:`broker_files` writes the broker's files for a workspace the way an operator would
(bind 127.0.0.1, a free port, its own data folder and PID file); :func:`start_mosquitto`
runs ``mosquitto -c DIR/mosquitto.conf`` as written and waits until it listens. Run as root
(CI), the broker drops to the ``mosquitto`` user as in production: fleet hands it the key
(``--owner``), and the files live in a folder that user can reach (pytest's ``tmp_path`` is
0700). Without Mosquitto the test skips, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fleet.broker.mosquitto import BrokerRequest, BrokerSetup, write_mosquitto
from fleet.workspace import Workspace
from helpers.env import PASSPHRASE, require_service

START_TIMEOUT = 10.0


def find_mosquitto() -> str:
    """The ``mosquitto`` binary (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        require_service("mosquitto is not installed (apt-get install mosquitto)")
    assert found is not None
    return found


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def broker_user() -> str | None:
    """The user the broker drops to: ``mosquitto`` when running as root and it exists."""
    if os.geteuid() != 0:
        return None  # Mosquitto ignores `user` unless started as root
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return "root"
    return "mosquitto"


@contextmanager
def broker_root() -> Iterator[Path]:
    """A folder the broker's user can reach (removed afterwards)."""
    folder = Path(tempfile.mkdtemp(prefix="fleet-broker-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def broker_files(ws: Workspace, root: Path, **options: object) -> BrokerSetup:
    """``fleet broker mosquitto --out ROOT/conf`` for a broker on 127.0.0.1 (a free port),
    with its data folder and PID file under ``root``; ``options`` override the request."""
    data = root / "data"
    data.mkdir()
    user = broker_user()
    if user not in (None, "root"):
        shutil.chown(data, user)
    values: dict[str, object] = {
        "out_dir": root / "conf",
        "hostnames": ("broker.fleet.test",),
        "ip_addresses": (ipaddress.ip_address("127.0.0.1"),),
        "port": free_port(),
        "bind": ipaddress.ip_address("127.0.0.1"),
        "user": user or pwd.getpwuid(os.geteuid()).pw_name,
        "owner": user if user not in (None, "root") else None,
        "data_dir": data,
        "pid_file": data / "mosquitto.pid",
        **options,
    }
    return write_mosquitto(ws, BrokerRequest(**values), passphrase=PASSPHRASE)


@dataclass
class Mosquitto:
    """A running broker: its process, port, configuration and log."""

    process: subprocess.Popen[bytes]
    port: int
    config: Path
    log: Path
    pid_file: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def reload(self) -> None:
        """SIGHUP, as ``fleet ca crl --reload-pid`` sends it."""
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_mosquitto(setup: BrokerSetup, port: int, log: Path) -> Mosquitto:
    """``mosquitto -c`` the configuration ``setup`` wrote; returns once it accepts TCP."""
    binary = find_mosquitto()
    handle = log.open("wb")
    process = subprocess.Popen(
        [binary, "-c", str(setup.config), "-v"], stdout=handle, stderr=subprocess.STDOUT
    )
    handle.close()
    pid_file = Path(
        next(
            line.split(None, 1)[1]
            for line in setup.config.read_text().splitlines()
            if line.startswith("pid_file ")
        )
    )
    broker = Mosquitto(process, port, setup.config, log, pid_file)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mosquitto exited {process.returncode}:\n{broker.log_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return broker
        except OSError:
            time.sleep(0.05)
    broker.stop()
    raise AssertionError(f"mosquitto did not listen on {port}:\n{broker.log_text()}")
