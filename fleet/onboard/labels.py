"""Device labels: a QR code holding the device ID, its hardware serial and its certificate's
SHA-256 fingerprint, with the same text printed beside it.

The QR code's text (``payload``) is one line of ``;``-separated fields, the first naming the
form and its version::

    fleet1;id=pump-0042;sn=SN-123;sha256=3f9a...c2 (64 lowercase hex digits)

``sn`` is left out for a device without a serial; in values ``%``, ``;`` and ``=`` are written
``%25``, ``%3B`` and ``%3D`` (:func:`parse_payload` reads it back). A label is written as
``ID-label.png`` (the code), ``ID-label.svg`` (the code with the text beside it) and
``ID-label.txt`` (the text), through :mod:`fleet.files` (all or nothing, no symlink followed).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from fleet.errors import Conflict, InvalidInput
from fleet.files import atomic_write

if TYPE_CHECKING:
    import segno

    from fleet.views import DeviceView
    from fleet.workspace import Workspace

PAYLOAD_FORM = "fleet1"
PNG_SCALE = 8  # pixels per module
BORDER = 4  # modules of quiet zone (the QR specification's minimum)
_ESCAPES = (("%", "%25"), (";", "%3B"), ("=", "%3D"))


def _quote(value: str) -> str:
    for raw, coded in _ESCAPES:
        value = value.replace(raw, coded)
    return value


def _unquote(value: str) -> str:
    for raw, coded in reversed(_ESCAPES):
        value = value.replace(coded, raw)
    return value


def parse_payload(text: str) -> dict[str, str]:
    """The fields of a label's QR text (``id``, ``sha256``, ``sn`` if present)."""
    form, _, rest = text.partition(";")
    if form != PAYLOAD_FORM:
        raise InvalidInput(f"not a fleet label: it starts with {form!r}, not {PAYLOAD_FORM!r}")
    fields: dict[str, str] = {}
    for part in rest.split(";"):
        key, sep, value = part.partition("=")
        if not sep:
            raise InvalidInput(f"not a fleet label: field {part!r} has no '='")
        fields[key] = _unquote(value)
    return fields


@dataclass(frozen=True)
class Label:
    """What a device's label shows."""

    device_id: str
    serial: str | None
    fingerprint_sha256: str

    @property
    def payload(self) -> str:
        """The QR code's text (the module docstring describes the form)."""
        fields = [PAYLOAD_FORM, f"id={_quote(self.device_id)}"]
        if self.serial:
            fields.append(f"sn={_quote(self.serial)}")
        fields.append(f"sha256={self.fingerprint_sha256}")
        return ";".join(fields)

    @property
    def text_lines(self) -> list[str]:
        """The human-readable text printed beside the code."""
        fp = self.fingerprint_sha256
        return [
            self.device_id,
            f"SN {self.serial or '-'}",
            f"SHA-256 {fp[:32]}",
            f"        {fp[32:]}",
        ]

    def qr(self) -> segno.QRCode:
        """The QR code (error correction M, or better where it fits the same size)."""
        import segno

        return segno.make_qr(self.payload, error="m", boost_error=True)

    def terminal(self) -> str:
        """The code in Unicode half blocks (two modules a character row), the text beside."""
        buffer = io.StringIO()
        self.qr().terminal(out=buffer, compact=True, border=2)
        rows = buffer.getvalue().rstrip("\n").split("\n")
        beside = ["", *self.text_lines]
        width = max(len(row) for row in rows)
        lines = [
            f"{row.ljust(width)}  {beside[i] if i < len(beside) else ''}".rstrip()
            for i, row in enumerate(rows)
        ]
        return "\n".join(lines) + "\n"

    def png(self) -> bytes:
        """The code as a PNG image (black on white, :data:`PNG_SCALE` pixels a module)."""
        buffer = io.BytesIO()
        self.qr().save(buffer, kind="png", scale=PNG_SCALE, border=BORDER)
        return buffer.getvalue()

    def svg(self) -> bytes:
        """The code with the text beside it, as one SVG image."""
        qr = self.qr()
        buffer = io.BytesIO()
        qr.save(buffer, kind="svg", scale=PNG_SCALE, border=BORDER, xmldecl=False, nl=False)
        code = buffer.getvalue().decode("utf-8")
        side, _ = qr.symbol_size(scale=PNG_SCALE, border=BORDER)
        text_width = 12 * max(len(line) for line in self.text_lines)
        height = max(side, 40 + 24 * len(self.text_lines))
        texts = "".join(
            f'<text x="{side + 8}" y="{40 + 24 * i}">{escape(line)}</text>'
            for i, line in enumerate(self.text_lines)
        )
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{side + 16 + text_width}" '
            f'height="{height}"><rect width="100%" height="100%" fill="#fff"/>{code}'
            f'<g font-family="monospace" font-size="18" fill="#000">{texts}</g></svg>\n'
        ).encode()

    def to_dict(self) -> dict[str, str | None]:
        """The JSON shape."""
        return {
            "device_id": self.device_id,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint_sha256,
            "payload": self.payload,
        }


@dataclass(frozen=True)
class LabelFiles:
    """Where a label was written."""

    png: Path
    svg: Path
    text: Path

    def to_dict(self) -> dict[str, str]:
        """The JSON shape."""
        return {"png": str(self.png), "svg": str(self.svg), "text": str(self.text)}


def label_of(device: DeviceView) -> Label:
    """The label of a device's newest active certificate (:class:`Conflict` without one)."""
    from fleet.statuses import CertStatus

    active = device.certificates_in(CertStatus.ACTIVE)
    if not active:
        raise Conflict(f"device {device.id!r} has no active certificate to put on a label")
    newest = max(active, key=lambda cert: (cert.not_before, cert.serial))
    return Label(device.id, device.serial, newest.fingerprint_sha256)


def write_label(label: Label, folder: Path) -> LabelFiles:
    """Write ``ID-label.png``, ``.svg`` and ``.txt`` into ``folder`` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"cannot write to {folder}: {exc.strerror}") from exc
    base = f"{label.device_id}-label"
    files = LabelFiles(folder / f"{base}.png", folder / f"{base}.svg", folder / f"{base}.txt")
    atomic_write(files.png, label.png())
    atomic_write(files.svg, label.svg())
    atomic_write(files.text, ("\n".join([label.payload, *label.text_lines]) + "\n").encode())
    return files


def make_label(
    ws: Workspace, device_id: str, out_dir: Path | None = None
) -> tuple[Label, LabelFiles]:
    """Write the label of an existing device into ``out_dir`` (default: the current folder);
    return it and its files (``fleet device label``). Example::

        make_label(Workspace(Path("~/fleet")), "pump-0042", Path("labels"))
    """
    from fleet.devices import show_device

    label = label_of(show_device(ws, device_id))
    return label, write_label(label, out_dir or Path.cwd())
