"""The background staging worker (``python -m TNMStagingLib.worker JOB.json``); runner shared with
``LiverTumorSegLib.worker``."""
