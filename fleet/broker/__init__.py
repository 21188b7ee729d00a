"""Brokers that enforce fleet's identities: the files an MQTT broker needs to accept only the
devices fleet issued (and did not revoke), each limited to its own topics.

:mod:`fleet.broker.mosquitto` writes them for Mosquitto 2.x (``fleet broker mosquitto``).
"""
