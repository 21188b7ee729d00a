"""From MQTT messages to connection events: the Sparkplug B 3.0 host rules, the plain
last-will convention, and the mapping of Sparkplug IDs to fleet device IDs.

:class:`Tracker` turns one message into zero or more :class:`~fleet.status.events.Seen`
events. It keeps, per edge node, the bdSeq of its last NBIRTH, whether it is online and which
of its devices are, and reads what it does not hold from the registry (a restarted watcher
judges an NDEATH by the bdSeq recorded as the NBIRTH event's ``session``):

- NBIRTH: the node is online (``session`` = its bdSeq, time = the payload's timestamp);
- NDEATH: the node and its online devices are offline, if the NDEATH's bdSeq equals the last
  NBIRTH's; a stale one (another bdSeq), or one for a node already dead in that session, is
  ignored;
- DBIRTH / DDEATH: the device is online / offline (``session`` = its node's bdSeq);
- ``fleet/{device_id}/status``: ``online`` / ``offline`` (or JSON ``{"online": bool,
  "timestamp": ms}``); a plain payload has no time of its own, so it is recorded only when it
  changes what this convention last said about the device.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, select
from sqlalchemy.engine import Engine

from fleet.errors import InvalidInput
from fleet.status.events import CHUNK, Seen
from fleet.status.models import ConnectionEvent, ConnectionStatus
from fleet.status.sparkplug import MessageKind, Payload, decode_payload, parse_topic
from fleet.statuses import ConnectionState, EventSource

ON, OFF = ConnectionState.ONLINE, ConnectionState.OFFLINE
SPARKPLUG, LWT = EventSource.SPARKPLUG, EventSource.MQTT_LWT
LWT_PREFIX, LWT_SUFFIX = "fleet/", "/status"

_event = ConnectionEvent.__table__  # type: ignore[attr-defined]
_state = ConnectionStatus.__table__  # type: ignore[attr-defined]


class IdMap:
    """Sparkplug IDs to fleet device IDs, by two templates over ``{group}``, ``{node}`` and
    (devices only) ``{device}``: by default ``{node}`` and ``{node}:{device}``."""

    def __init__(self, node: str = "{node}", device: str = "{node}:{device}") -> None:
        self.node, self.device = node, device
        _check_template(node, {"group", "node"}, "--node-id")
        _check_template(device, {"group", "node", "device"}, "--device-id")

    def node_id(self, group: str, node: str) -> str:
        """The fleet device ID of edge node ``node`` in ``group``."""
        return self.node.format(group=group, node=node)

    def device_id(self, group: str, node: str, device: str) -> str:
        """The fleet device ID of Sparkplug device ``device`` on ``node``."""
        return self.device.format(group=group, node=node, device=device)


def _check_template(template: str, allowed: set[str], option: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise InvalidInput(f"{option} {template!r}: {err}") from None
    if not names or not names <= allowed:
        raise InvalidInput(
            f"{option} {template!r}: use only {', '.join('{' + n + '}' for n in sorted(allowed))}"
        )


@dataclass
class NodeMemory:
    """What the tracker knows of one edge node's current session."""

    bd_seq: str | None
    online: bool
    birth: datetime | None
    devices: set[str] = field(default_factory=set)


@dataclass
class Counts:
    """What the tracker did with the messages it saw."""

    messages: int = 0
    stale: int = 0  # NDEATH whose bdSeq is not the last NBIRTH's
    repeated: int = 0  # a death already applied, a plain LWT saying nothing new
    ignored: int = 0  # not a subscribed shape, or an undecodable payload


class Registry:
    """The tracker's reads of what earlier runs recorded (any backend)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def last_events(
        self, ids: list[str], source: EventSource
    ) -> dict[str, tuple[str, str | None, datetime]]:
        """(state, session, source time) of each device's newest event from ``source``, for
        the devices that have one: read through ``connection_state`` (one indexed query per
        chunk), then event by event for the few whose state another source decided last."""
        found: dict[str, tuple[str, str | None, datetime]] = {}
        elsewhere: list[str] = []
        same = and_(
            _event.c.device_id == _state.c.device_id,
            _event.c.source_time == _state.c.source_time,
            _event.c.source == _state.c.source,
            _event.c.state == _state.c.state,
        )
        with self.engine.connect() as conn:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                query = (
                    select(_state.c.device_id, _state.c.source, _state.c.state)
                    .add_columns(_state.c.source_time, _event.c.session)
                    .select_from(_state.outerjoin(_event, same))
                    .where(_state.c.device_id.in_(chunk))
                    .order_by(_event.c.id)
                )
                for row in conn.execute(query):
                    if row.source == source:
                        found[row.device_id] = (row.state, row.session, row.source_time)
                    else:
                        elsewhere.append(row.device_id)
            for device_id in elsewhere:
                latest = (
                    select(_event.c.state, _event.c.session, _event.c.source_time)
                    .where(_event.c.device_id == device_id, _event.c.source == source)
                    .order_by(_event.c.source_time.desc(), _event.c.id.desc())
                    .limit(1)
                )
                hit = conn.execute(latest).first()
                if hit is not None:
                    found[device_id] = (hit.state, hit.session, hit.source_time)
        return found

    def online_sparkplug_devices(self) -> dict[str, set[str]]:
        """``"{group}/{node}"`` -> the IDs of its devices a DBIRTH left online."""
        query = select(_state.c.device_id, _state.c.reason).where(
            _state.c.state == ON, _state.c.source == SPARKPLUG
        )
        found: dict[str, set[str]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                kind, _, node = (row.reason or "").partition(" ")
                if kind == MessageKind.DBIRTH and node:
                    found.setdefault(node, set()).add(row.device_id)
        return found


def _when(ms: int | None, fallback: datetime) -> datetime:
    if ms is None or ms <= 0:
        return fallback
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return fallback


class Tracker:
    """Applies the Sparkplug and last-will rules to messages, one at a time, in order."""

    def __init__(
        self, ids: IdMap, registry: Registry | None, *, note: Callable[[str], None] | None = None
    ) -> None:
        self.ids, self.registry = ids, registry
        self.note = note or (lambda _line: None)
        self.counts = Counts()
        self.nodes: dict[str, NodeMemory] = {}
        self.lwt: dict[str, str] = {}
        self._looked_up: set[str] = set()  # node keys and LWT device IDs read from the registry
        self._devices_of = registry.online_sparkplug_devices() if registry else {}

    def online_nodes(self) -> int:
        """How many edge nodes are online as far as this tracker knows."""
        return sum(1 for node in self.nodes.values() if node.online)

    def prefetch(self, topics: list[str]) -> None:
        """Read what the registry says of the nodes and LWT devices these topics name that
        this tracker has not seen yet: one query per chunk rather than one per message."""
        if self.registry is None:
            return
        nodes: dict[str, str] = {}  # node ID -> node key
        lwt: set[str] = set()
        for topic in topics:
            if topic.startswith(LWT_PREFIX) and topic.endswith(LWT_SUFFIX):
                device_id = topic[len(LWT_PREFIX) : -len(LWT_SUFFIX)]
                if device_id not in self.lwt and device_id not in self._looked_up:
                    lwt.add(device_id)
            elif (parsed := parse_topic(topic)) is not None:
                key = f"{parsed.group}/{parsed.node}"
                if key not in self.nodes and key not in self._looked_up:
                    nodes[self.ids.node_id(parsed.group, parsed.node)] = key
        if nodes:
            found = self.registry.last_events(sorted(nodes), SPARKPLUG)
            for node_id, key in nodes.items():
                self._looked_up.add(key)
                if node_id in found:
                    self._remember(key, found[node_id])
        if lwt:
            found = self.registry.last_events(sorted(lwt), LWT)
            self._looked_up.update(lwt)
            self.lwt.update({device_id: row[0] for device_id, row in found.items()})

    def _remember(self, node_key: str, last: tuple[str, str | None, datetime]) -> NodeMemory:
        online = last[0] == ON
        devices = self._devices_of.pop(node_key, set())
        memory = NodeMemory(last[1], online, last[2] if online else None, devices)
        self.nodes[node_key] = memory
        return memory

    def handle(self, topic: str, payload: bytes, received: datetime) -> list[Seen]:
        """The events ``payload`` on ``topic`` means (none for a stale or repeated one)."""
        self.counts.messages += 1
        try:
            if topic.startswith(LWT_PREFIX) and topic.endswith(LWT_SUFFIX):
                return self._lwt(topic[len(LWT_PREFIX) : -len(LWT_SUFFIX)], payload, received)
            parsed = parse_topic(topic)
            if parsed is None:
                raise InvalidInput("not a Sparkplug NBIRTH/NDEATH/DBIRTH/DDEATH topic")
            decoded = decode_payload(payload)
        except InvalidInput as err:
            self.counts.ignored += 1
            self.note(f"ignored a message on {topic[:200]}: {err}")
            return []
        node_key = f"{parsed.group}/{parsed.node}"
        node_id = self.ids.node_id(parsed.group, parsed.node)
        if parsed.kind == MessageKind.NBIRTH:
            return self._nbirth(node_key, node_id, decoded, received)
        if parsed.kind == MessageKind.NDEATH:
            return self._ndeath(node_key, node_id, decoded, received)
        assert parsed.device is not None
        device_id = self.ids.device_id(parsed.group, parsed.node, parsed.device)
        memory = self._node(node_key, node_id)
        if memory is None:  # a DBIRTH before any NBIRTH we know of: the node is up
            memory = self.nodes[node_key] = NodeMemory(None, True, None)
        online = parsed.kind == MessageKind.DBIRTH
        (memory.devices.add if online else memory.devices.discard)(device_id)
        return [
            Seen(
                device_id,
                ON if online else OFF,
                SPARKPLUG,
                _when(decoded.timestamp, received),
                session=memory.bd_seq,
                reason=f"{parsed.kind} {node_key}",
                firmware=decoded.firmware if online else None,
            )
        ]

    def _node(self, node_key: str, node_id: str) -> NodeMemory | None:
        memory = self.nodes.get(node_key)
        if memory is None and self.registry is not None and node_key not in self._looked_up:
            self._looked_up.add(node_key)
            last = self.registry.last_events([node_id], SPARKPLUG).get(node_id)
            if last is not None:
                memory = self._remember(node_key, last)
        return memory

    def _nbirth(
        self, node_key: str, node_id: str, payload: Payload, received: datetime
    ) -> list[Seen]:
        bd_seq = None if payload.bd_seq is None else str(payload.bd_seq)
        when = _when(payload.timestamp, received)
        known = self._node(node_key, node_id)
        devices = known.devices if known else set()
        self.nodes[node_key] = NodeMemory(bd_seq, True, when, devices)
        reason = f"{MessageKind.NBIRTH} {node_key}"
        return [
            Seen(
                node_id,
                ON,
                SPARKPLUG,
                when,
                session=bd_seq,
                reason=reason,
                firmware=payload.firmware,
            )
        ]

    def _ndeath(
        self, node_key: str, node_id: str, payload: Payload, received: datetime
    ) -> list[Seen]:
        bd_seq = None if payload.bd_seq is None else str(payload.bd_seq)
        memory = self._node(node_key, node_id)
        if memory is not None and memory.bd_seq is not None and bd_seq is not None:
            if bd_seq != memory.bd_seq:
                self.counts.stale += 1
                self.note(
                    f"ignored a stale NDEATH of {node_key}: bdSeq {bd_seq}, "
                    f"its NBIRTH had {memory.bd_seq}"
                )
                return []
            if not memory.online:
                self.counts.repeated += 1
                return []
        # A will-delivered NDEATH was composed at CONNECT, before the NBIRTH: its timestamp
        # predates the session, so the time it reached us is the better one.
        when = _when(payload.timestamp, received)
        if memory is not None and memory.birth is not None and when <= memory.birth:
            when = max(received, memory.birth + timedelta(milliseconds=1))
        reason = f"{MessageKind.NDEATH} {node_key}"
        session = bd_seq if bd_seq is not None else (memory.bd_seq if memory else None)
        events = [Seen(node_id, OFF, SPARKPLUG, when, session=session, reason=reason)]
        if memory is None:
            memory = self.nodes[node_key] = NodeMemory(session, False, None)
        events += [
            Seen(device_id, OFF, SPARKPLUG, when, session=session, reason=reason)
            for device_id in sorted(memory.devices)
        ]
        memory.online, memory.devices = False, set()
        return events

    def _lwt(self, device_id: str, payload: bytes, received: datetime) -> list[Seen]:
        if not device_id or "/" in device_id:
            raise InvalidInput("expected fleet/{device_id}/status")
        text = payload.decode("utf-8", "replace").strip()
        timestamp: int | None = None
        if text.startswith("{"):
            try:
                body = json.loads(text)
                online, timestamp = body["online"], body.get("timestamp")
            except (ValueError, KeyError, TypeError):
                raise InvalidInput(
                    'expected JSON {"online": true|false, "timestamp": ms}'
                ) from None
            if not isinstance(online, bool) or not isinstance(timestamp, int | None):
                raise InvalidInput('expected JSON {"online": true|false, "timestamp": ms}')
            state = ON if online else OFF
        elif text.lower() in (ON, OFF):
            state = ConnectionState(text.lower())
        else:
            raise InvalidInput("expected online or offline")
        if timestamp is None:
            # No time of its own: a redelivered or retained copy would look new, so a plain
            # payload counts only when it changes what this convention last said.
            last = self.lwt.get(device_id)
            if last is None and self.registry is not None and device_id not in self._looked_up:
                self._looked_up.add(device_id)
                found = self.registry.last_events([device_id], LWT).get(device_id)
                last = found[0] if found else None
            if last == state:
                self.counts.repeated += 1
                return []
        self.lwt[device_id] = state
        return [
            Seen(
                device_id,
                state,
                LWT,
                _when(timestamp, received),
                reason="last will" if state == OFF else None,
            )
        ]
