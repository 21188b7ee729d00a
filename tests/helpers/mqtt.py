"""A real Mosquitto for the tests, a QoS 1 publisher, ``fleet watch`` as a child process, and
pysparkplug (an independent Sparkplug B edge node) in its own virtualenv."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from helpers.cli import child_env
from helpers.env import require_service

PYSPARKPLUG = "0.6.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        require_service("mosquitto is not installed (apt-get install mosquitto)")
    assert found is not None
    return found


# Queue QoS 0 births for an absent watcher too (Sparkplug publishes NBIRTH at QoS 0), and no
# cap on messages in flight: the watcher holds a batch's worth unacknowledged.
BROKER_OPTIONS = """\
allow_anonymous true
persistence false
queue_qos0_messages true
max_queued_messages 0
max_inflight_messages 0
"""


class Broker:
    """``mosquitto -c CONF`` on 127.0.0.1:``port``; ``extra`` is appended to the config."""

    def __init__(self, folder: Path, *, extra: str = "", listener: str | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        # as root, mosquitto drops to its own user, who cannot read pytest's 0700 folders
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            (listener or f"listener {self.port} 127.0.0.1\n") + user + BROKER_OPTIONS + extra
        )
        self.log = folder / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.conf), "-v"], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextmanager
def running_broker(folder: Path, **kwargs: str) -> Iterator[Broker]:
    broker = Broker(folder, **kwargs)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Publisher:
    """A paho 2.x client publishing with QoS 1 and waiting for each PUBACK."""

    def __init__(self, broker: Broker, client_id: str = "test-publisher") -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def watch_process(home: Path, db_url: str | None, url: str, *args: str) -> subprocess.Popen[str]:
    """``python -m fleet watch URL`` in a child process (stderr captured as text)."""
    base = ["--home", str(home)] + (["--db", db_url] if db_url else [])
    return subprocess.Popen(
        [sys.executable, "-m", "fleet", *base, "watch", url, "--summary", "3600", *args],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_process(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    """Send ``sig``, wait, and return the child's stderr."""
    if process.poll() is None:
        process.send_signal(sig)
    _out, err = process.communicate(timeout=30)
    return err


def wait_for(check: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def pysparkplug_python() -> Path:
    """The python of a virtualenv with pysparkplug (it pins paho-mqtt<2, hence its own),
    created once per version under the cache folder."""
    cache = Path(os.environ.get("FLEET_TEST_CACHE", Path(tempfile.gettempdir()) / "fleet-cache"))
    venv = cache / f"pysparkplug-{PYSPARKPLUG}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return python
    try:
        shutil.rmtree(venv, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"pysparkplug=={PYSPARKPLUG}"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.SubprocessError, OSError) as err:
        require_service(f"cannot create a virtualenv with pysparkplug {PYSPARKPLUG}: {err}")
    marker.touch()
    return python
