"""Where the fleet stands: the one-screen summary (:mod:`fleet.status.summary`) and devices'
connection status: events from MQTT, the clouds and ingested files (:mod:`.events`,
:mod:`.ingest`), and the state and history derived from them (:mod:`.history`)."""
