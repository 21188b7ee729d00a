"""An edge node built on pysparkplug, run in its own virtualenv by the tests (never imported
by fleet). Reads commands on stdin, one per line, and answers ``ok`` once each is done:

    connect            connect: NBIRTH (and DBIRTH for registered devices)
    device ID          register a device: DBIRTH
    drop ID            deregister it: DDEATH
    disconnect         pysparkplug's explicit NDEATH (bdSeq + 1: stale), then a clean close

Killing the process makes the broker deliver its will: the NDEATH with the NBIRTH's bdSeq.
"""

import sys
import time

import pysparkplug as psp

group, node, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
firmware = psp.Metric(
    timestamp=psp.get_current_timestamp(),
    name="Properties/Firmware Version",
    datatype=psp.DataType.STRING,
    value="2.4.1",
)
temperature = psp.Metric(
    timestamp=psp.get_current_timestamp(), name="temp", datatype=psp.DataType.DOUBLE, value=21.5
)
edge = psp.EdgeNode(group, node, [firmware, temperature])

for line in sys.stdin:
    command, _, arg = line.strip().partition(" ")
    if command == "connect":
        edge.connect(host, port=port, blocking=False)
        while not edge._connected:
            time.sleep(0.01)
    elif command == "device":
        level = psp.Metric(
            timestamp=psp.get_current_timestamp(),
            name="level",
            datatype=psp.DataType.INT32,
            value=-3,
        )
        edge.register(psp.Device(arg, [level]))
    elif command == "drop":
        edge.deregister(arg)
    elif command == "disconnect":
        edge.disconnect()
    time.sleep(0.2)  # let the network thread send it
    print("ok", flush=True)
