"""Exceptions an app may see from the worker, in a module of their own: the hot-path modules
are compiled (mypyc), which cannot derive a class from OSError."""


class ClientDisconnected(OSError):
    """Raised by an ASGI app's send() once its client has left (ASGI 2.4, as uvicorn does):
    an app that streams stops at its next piece instead of producing it for no one."""
