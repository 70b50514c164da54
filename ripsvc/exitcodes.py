"""Named exit codes shared by every rip process.

A supervisor (systemd or the embedded one) reads these to decide what to do next:
APP_LOAD_ERROR must never be restarted in a loop, RECYCLE asks for a replacement.
"""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    #: Unexpected failure inside rip itself.
    FAILURE = 1
    #: Bad command line or settings (the convention of argparse and of `ripctl check`).
    USAGE = 2
    #: The app could not be imported or its startup failed; restarting will not help.
    APP_LOAD_ERROR = 4
    #: The worker reached a recycling limit and asks to be replaced (EX_TEMPFAIL).
    RECYCLE = 75
    #: A WebSocket worker whose app has no WebSockets (WSGI): not to be started again
    #: (EX_CONFIG).
    NO_WEBSOCKETS = 78


#: How a worker that exits with APP_LOAD_ERROR begins its last STATUS= line, followed by the
#: error and where it was raised; the manager reports what follows (ripctl, its journal).
APP_LOAD_STATUS = "cannot load the app: "
