"""Run a command with a listening TCP socket passed as fd 3, as systemd's socket activation does.

    python bench/activate.py HOST:PORT -- COMMAND ARGS...

LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES are set for the command (LISTEN_PID is the pid after
exec, which is ours). uvicorn takes the same socket with `--fd 3`.
"""

import os
import socket
import sys


def main() -> None:
    address, _, command = sys.argv[1], sys.argv[2], sys.argv[3:]
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit TCP_NODELAY on Linux; uvicorn --fd takes the socket as AF_UNIX
    # and so never sets it itself, which would measure Nagle delays instead of the server.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    if sock.fileno() != 3:
        os.dup2(sock.fileno(), 3)
        sock.close()
    os.set_inheritable(3, True)
    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="http")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
