"""rip-server: a systemd-native application server for Python web apps."""

__version__ = "0.1.0"
