#!/usr/bin/env python3
"""Send one command to baresip's ctrl_tcp module and print the JSON replies.

    bctl.py CTRL_PORT COMMAND [PARAMS] [--wait SECONDS]

e.g. bctl.py 16210 reginfo ; bctl.py 16210 dial sip:bob@ringmesh.test ;
bctl.py 16210 hangup. Frames are netstrings ("LEN:JSON,"); the reply to the
command is {"response":true,"ok":...,"data":...,"token":...}; events
({"event":true,...}) received within --wait seconds (default 1) are printed
too. Python standard library only. Exit status 0 when the reply says ok.
"""
import json
import socket
import sys
import time


def frames(buf):
    """Yield complete netstrings from buf (a bytearray), consuming them."""
    while True:
        colon = buf.find(b":")
        if colon < 0:
            return
        n = int(buf[:colon])
        if len(buf) < colon + 1 + n + 1:
            return
        payload = bytes(buf[colon + 1:colon + 1 + n])
        del buf[:colon + 1 + n + 1]
        yield payload


def main(argv):
    wait = 1.0
    if "--wait" in argv:
        i = argv.index("--wait")
        wait = float(argv[i + 1])
        del argv[i:i + 2]
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    port, command, params = int(argv[1]), argv[2], " ".join(argv[3:])
    msg = json.dumps({"command": command, "params": params, "token": "bctl"}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"%d:%s," % (len(msg), msg))
    buf = bytearray()
    ok = None
    deadline = time.time() + max(wait, 0.2)
    s.settimeout(0.2)
    while time.time() < deadline or ok is None:
        if ok is None and time.time() > deadline + 5:
            break
        try:
            data = s.recv(65536)
            if not data:
                break
            buf += data
        except socket.timeout:
            continue
        for f in frames(buf):
            obj = json.loads(f)
            print(json.dumps(obj))
            if obj.get("response"):
                ok = bool(obj.get("ok"))
    s.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
