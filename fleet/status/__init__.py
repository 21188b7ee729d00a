"""Where the fleet stands: the one-screen summary (:mod:`fleet.status.summary`)."""
