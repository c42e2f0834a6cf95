"""A debug-mode step's command: have the fork server (:mod:`.forkserver`) run the script.

Run by path (``python forkclient.py SCRIPT``), importing the standard library only, so that it
starts in milliseconds. It hands the server its arguments, folder, environment and standard
streams and exits with the status of the forked step. Without a server (none started, or gone)
it becomes the step itself: ``python SCRIPT``, as dflow would have run it.
"""

import json
import os
import socket
import struct
import sys


def main() -> None:
    argv = sys.argv[1:]
    path = os.environ.get("LAMFLOW_DFLOW_FORKSERVER")
    conn = None
    if path:
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(path)
            payload = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
            socket.send_fds(conn, [struct.pack("!I", len(payload)) + payload], [0, 1, 2])
        except OSError:
            conn = None
    if conn is None:
        os.execv(sys.executable, [sys.executable, *argv])
    status = b""
    while len(status) < 4:
        chunk = conn.recv(4 - len(status))
        if not chunk:  # the server died with the step: a failure, never a silent success
            print("lamflow: the fork server ended before the step did", file=sys.stderr)
            os._exit(1)
        status += chunk
    os._exit(struct.unpack("!i", status)[0])


if __name__ == "__main__":
    main()
