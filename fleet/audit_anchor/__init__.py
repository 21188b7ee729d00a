"""The audit trail anchored outside the registry: signed checkpoints of its head
(:mod:`~fleet.audit_anchor.checkpoints`), ``fleet audit verify`` against them and against
earlier signed exports (:mod:`~fleet.audit_anchor.anchored`), and the live tables compared
with the state the trail replays to (:mod:`~fleet.audit_anchor.state`). See
docs/security.md."""
