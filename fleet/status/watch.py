"""``fleet watch``: a Sparkplug B host application that records connection events.

It connects (MQTT v5, TLS with a client certificate for ``mqtts://``) on a persistent session
(clean start off, a session expiry), subscribes with QoS 1 to the Sparkplug births and deaths
and to the plain last-will convention ``fleet/{device_id}/status``, and hands each message to
:class:`~fleet.status.mapping.Tracker`. Events are committed in batches (every ``batch_size``
messages or ``batch_ms``), and each message is acknowledged (paho's manual ack) only after the
batch holding it committed: a watcher killed at any moment leaves its unacknowledged messages
on the broker, which redelivers them to the next run on the same session, and
:func:`~fleet.status.events.record` records an event once however often it arrives.

One thread does it all: reading (paho's ``loop()``), the rules, the commits and the
acknowledgements.

It publishes its own retained ``spBv1.0/STATE/{host_id}`` (``{"online": true, "timestamp":
ms}``), with the offline form as its will, as Sparkplug 3.0 host applications do.
"""

from __future__ import annotations

import contextlib
import json
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import SQLAlchemyError

from fleet import clock
from fleet.errors import FleetError, InvalidInput
from fleet.registry.db import after_commit_hooks, before_commit_hooks
from fleet.status.events import RecordReport, Seen, record
from fleet.status.mapping import IdMap, Registry, Tracker
from fleet.workspace import Workspace

SUBSCRIPTIONS = (
    "spBv1.0/+/NBIRTH/+",
    "spBv1.0/+/NDEATH/+",
    "spBv1.0/+/DBIRTH/+/+",
    "spBv1.0/+/DDEATH/+/+",
    "fleet/+/status",
)
PORTS = {"mqtt": 1883, "mqtts": 8883}
RETRY_SECONDS = 2.0  # between attempts to commit a batch the database refused


class BrokerError(FleetError):
    """The broker cannot be reached or refused the watcher (exit 1)."""


@dataclass
class WatchOptions:
    """How ``fleet watch`` connects, maps IDs and batches."""

    url: str
    host_id: str = "fleet"
    client_id: str | None = None  # default fleet-watch-{host_id}
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    node_id: str = "{node}"
    device_id: str = "{node}:{device}"
    batch_size: int = 5000
    batch_ms: int = 200
    session_expiry: int = 7 * 24 * 3600  # seconds the broker keeps the session while away
    keepalive: int = 30
    summary_seconds: float = 60.0


@dataclass
class WatchReport:
    """What a watcher run did (the summary lines say the same)."""

    messages: int = 0
    batches: int = 0
    recorded: RecordReport = field(default_factory=RecordReport)
    stale: int = 0
    repeated: int = 0
    ignored: int = 0

    def line(self, online_nodes: int) -> str:
        """The one-line summary."""
        r = self.recorded
        return (
            f"watch: {self.messages} messages, {r.recorded} events recorded, "
            f"{r.duplicates} duplicates, {r.stray} stray, {self.stale} stale NDEATH ignored, "
            f"{online_nodes} nodes online"
        )


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``."""
    parts = urlsplit(url)
    if parts.scheme not in PORTS or not parts.hostname or parts.path not in ("", "/"):
        raise InvalidInput(
            f"broker URL {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
        )
    try:
        port = parts.port or PORTS[parts.scheme]
    except ValueError:
        raise InvalidInput(f"broker URL {url!r}: bad port") from None
    return parts.hostname, port, parts.scheme == "mqtts"


def _state_payload(online: bool, timestamp: int) -> bytes:
    return json.dumps({"online": online, "timestamp": timestamp}).encode()


class Watcher:
    """One connection to the broker, feeding batches to :func:`record` until stopped."""

    def __init__(self, ws: Workspace, options: WatchOptions, say: Callable[[str], None]) -> None:
        for name in ("batch_size", "batch_ms", "session_expiry"):
            if getattr(options, name) < 1:
                raise InvalidInput(f"--{name.replace('_', '-')} must be at least 1")
        self.host, self.port, self.tls = parse_broker_url(options.url)
        if self.tls and not (options.cert and options.key and options.ca):
            raise InvalidInput("mqtts:// needs --cert, --key and --ca (mutual TLS)")
        self.options, self.say = options, say
        self.ids = IdMap(options.node_id, options.device_id)
        self.engine = ws.open_registry()
        # load the commit hooks now rather than in the first batch of a storm (~1 s)
        before_commit_hooks(), after_commit_hooks()
        self.tracker = Tracker(self.ids, Registry(self.engine), note=say)
        self.rebuild = False
        self.batch: list[tuple[mqtt.MQTTMessage, datetime]] = []
        self.stop = threading.Event()
        self.report = WatchReport()
        self.state_topic = f"spBv1.0/STATE/{options.host_id}"
        self.born = int(time.time() * 1000)  # the STATE birth and will share their timestamp
        self.connected_once = False
        self.refused: str | None = None
        self.client_id = options.client_id or f"fleet-watch-{options.host_id}"
        self.client = self._client()

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.will_set(self.state_topic, _state_payload(False, self.born), qos=1, retain=True)
        if self.tls:
            try:
                client.tls_set(
                    ca_certs=str(self.options.ca),
                    certfile=str(self.options.cert),
                    keyfile=str(self.options.key),
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError) as err:
                raise InvalidInput(f"TLS files: {err}") from None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # --- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            self.say(f"the broker refused the connection: {reason}")
            self.stop.set()
            return
        if not self.connected_once:
            resumed = "resumed its session" if flags.session_present else "new session"
            self.say(f"connected to {self.options.url} as {self.client_id}: {resumed}")
        if not flags.session_present:
            if self.connected_once:
                self.say(
                    "reconnected without a session: what was published while away is lost; "
                    "states stay as last recorded until nodes publish births or deaths again"
                )
            else:
                self.say(
                    "new broker session: nothing published before it is known; states stay "
                    "as last recorded until nodes publish births or deaths"
                )
        elif self.connected_once:
            self.say("reconnected: the broker kept the session, missed messages follow")
        self.connected_once = True
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(topic, options) for topic in SUBSCRIPTIONS])
        client.publish(self.state_topic, _state_payload(True, self.born), qos=1, retain=True)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if not self.connected_once:
            # closed before a CONNACK: TLS refused our certificate, or not an MQTT broker
            self.refused = f"closed the connection before accepting it ({reason})"
            self.stop.set()
        elif not self.stop.is_set():
            self.say(
                f"lost the broker connection ({reason}): not marking anything online or "
                f"offline while away; {self.tracker.online_nodes()} nodes were online"
            )

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.batch.append((msg, clock.now()))

    # --- the loop -------------------------------------------------------------------------
    # One thread does everything (reads, rules, commits, acks): a paho network thread would
    # compete for the GIL with the commits and read a packet per switch interval.

    def run(self) -> WatchReport:
        """Connect, then record batches until :attr:`stop` is set; then finish the batch,
        publish the offline STATE and disconnect."""
        try:
            self.client.connect(
                self.host,
                self.port,
                self.options.keepalive,
                clean_start=False,
                properties=self._connect_properties(),
            )
        except (OSError, ssl.SSLError) as err:
            raise BrokerError(f"cannot connect to {self.options.url}: {err}") from None
        try:
            self._loop()
        finally:
            self._shutdown()
        if self.refused and not self.connected_once:
            raise BrokerError(f"{self.options.url} refused the watcher: {self.refused}")
        return self.report

    def _connect_properties(self) -> Properties:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.options.session_expiry
        properties.ReceiveMaximum = 65535  # the batch holds this many unacknowledged at most
        return properties

    def _loop(self) -> None:
        opened = 0.0
        next_summary = time.monotonic() + self.options.summary_seconds
        window = self.options.batch_ms / 1000
        delay = 1.0
        wait = 0.0
        while True:
            now = time.monotonic()
            if self.batch and (
                len(self.batch) >= self.options.batch_size
                or now - opened >= window
                or self.stop.is_set()
            ):
                if not self._commit(self.batch):
                    if self.stop.wait(RETRY_SECONDS):
                        return  # unacknowledged: the broker redelivers them next run
                    continue
                self.batch = []
            if now >= next_summary:
                self.say(self.report.line(self.tracker.online_nodes()))
                next_summary = now + self.options.summary_seconds
            if self.stop.is_set():
                return  # what was not read stays on the broker, for the next run
            had = len(self.batch)
            rc = self.client.loop(timeout=wait)
            if rc == mqtt.MQTT_ERR_SUCCESS:
                delay = 1.0
            elif not self.stop.is_set():
                # connection lost (on_disconnect said so): commit the open batch first (its
                # acknowledgements then go nowhere; the broker redelivers those messages,
                # recorded once all the same), then reconnect with a backoff
                if self.batch:
                    opened = 0.0
                    continue
                if self.stop.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
                with contextlib.suppress(OSError, ssl.SSLError):
                    self.client.reconnect()
                continue
            if not had and self.batch:
                opened = time.monotonic()
            # keep reading while messages come; else sleep in select() until the window ends
            if len(self.batch) > had:
                wait = 0.0
            else:
                wait = min(0.5, max(0.0, opened + window - time.monotonic())) if self.batch else 0.5

    def _commit(self, batch: list[tuple[mqtt.MQTTMessage, datetime]]) -> bool:
        """Apply the rules to a batch of messages in order, record the events in one
        transaction, then acknowledge the messages. The tracker's memory is rebuilt from
        the registry after a failed commit, so a retry judges the batch the same way."""
        try:
            if self.rebuild:
                counts = self.tracker.counts
                self.tracker = Tracker(self.ids, Registry(self.engine), note=self.say)
                self.tracker.counts, self.rebuild = counts, False
            self.tracker.prefetch([msg.topic for msg, _ in batch])
            events: list[Seen] = []
            for msg, received in batch:
                events += self.tracker.handle(msg.topic, bytes(msg.payload), received)
            done = record(self.engine, events)
        except (SQLAlchemyError, FleetError) as err:
            text = " ".join(str(err).split())[:300]
            self.say(f"cannot commit {len(batch)} messages, retrying: {text}")
            self.rebuild = True  # its memory ran ahead of what was committed
            return False
        for msg, _ in batch:
            if msg.qos > 0:
                self.client.ack(msg.mid, msg.qos)
        report = self.report
        report.messages += len(batch)
        report.batches += 1
        report.recorded.add(done)
        counts = self.tracker.counts
        report.stale, report.repeated, report.ignored = (
            counts.stale,
            counts.repeated,
            counts.ignored,
        )
        if done.stray:
            self.say(
                f"{done.stray} events for unknown or decommissioned devices kept aside: "
                + ", ".join(done.stray_ids[:5])
            )
        return True

    def _shutdown(self) -> None:
        self.stop.set()
        if self.connected_once and self.client.is_connected():
            info = self.client.publish(
                self.state_topic, _state_payload(False, self.born), qos=1, retain=True
            )
            deadline = time.monotonic() + 5
            # if the connection drops meanwhile, the broker publishes the will instead
            while not info.is_published() and time.monotonic() < deadline:
                if self.client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                    break
            self.client.disconnect()
            self.client.loop(timeout=0.1)  # send the DISCONNECT


def watch(
    ws: Workspace,
    options: WatchOptions,
    *,
    say: Callable[[str], None],
    ready: Callable[[Watcher], None] | None = None,
) -> WatchReport:
    """Run a watcher until SIGTERM or SIGINT (in the main thread), or until the broker
    refuses it; returns what it recorded. ``ready`` receives the watcher before it connects
    (tests stop it through ``watcher.stop``)."""
    watcher = Watcher(ws, options, say)
    if ready is not None:
        ready(watcher)
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        say(f"{signal.Signals(signum).name}: finishing the batch and stopping")
        watcher.stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        report = watcher.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    say(watcher.report.line(watcher.tracker.online_nodes()))
    return report
