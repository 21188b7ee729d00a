"""Firmware: a signed catalogue of images, what each device reports and is meant to run, and
phased rollouts that deliver targets through the cloud outbox (docs/firmware.md)."""
