"""The worker: runs the user's app, one request at a time, on a socket handed over by systemd."""
