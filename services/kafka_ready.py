"""Exit 0 when the Kafka broker at HOST:PORT answers a Metadata request with itself in it.

Stdlib only, so the service scripts work before the project's virtualenv exists.
Speaks Metadata v4 (still supported by Kafka 4; v0-v3 were removed by KIP-896).
"""
import socket
import struct
import sys


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def broker_count(host: str, port: int, timeout: float = 2.0) -> int:
    client_id = b"usync-ready"
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body = struct.pack(">ib", -1, 0)  # all topics, no auto-creation
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        response = _read_exact(sock, size)
    correlation_id, _throttle, brokers = struct.unpack(">iii", response[:12])
    if correlation_id != 7:
        raise ValueError("unexpected correlation id")
    return brokers


if __name__ == "__main__":
    host, port = sys.argv[1].rsplit(":", 1)
    try:
        sys.exit(0 if broker_count(host, int(port)) >= 1 else 1)
    except (OSError, ValueError, struct.error):
        sys.exit(1)
