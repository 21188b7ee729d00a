"""How the fleet is doing: the one-screen summary, and devices' connection status (events
from MQTT, the clouds and ingested files, and the state derived from them)."""
