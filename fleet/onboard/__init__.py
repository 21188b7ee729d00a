"""The onboarding station (``fleet onboard``): a technician's bench session that unlocks the
CA once and onboards one device after another (:mod:`fleet.onboard.session`), each with a QR
label (:mod:`fleet.onboard.labels`)."""
