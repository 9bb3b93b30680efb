"""Cost of a denial as a client sees it, against `make run`'s demo (publisher identity, port 14001).

Sends N PUBs and a PING and times until the PONG: once to an allowed subject, once to a denied one.
Each denied PUB is replaced upstream by a PING whose PONG natsguard turns into the -ERR, and is
logged as one audit line. Usage: .venv/bin/python scripts/deny-cost.py [N]
"""
import socket
import sys
import time

PUBLISHER = ("127.0.0.1", 14001)


def read_until(sock, done):
    received = b""
    while not done(received):
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("natsguard closed the connection")
        received += chunk
    return received


def seconds_for(subject, count):
    with socket.create_connection(PUBLISHER) as sock:
        read_until(sock, lambda b: b.endswith(b"\r\n"))  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        read_until(sock, lambda b: b"PONG\r\n" in b)
        frames = (b"PUB " + subject + b" 16\r\n0123456789abcdef\r\n") * count + b"PING\r\n"
        started = time.perf_counter()
        sock.sendall(frames)
        replies = read_until(sock, lambda b: b.endswith(b"PONG\r\n"))
        return time.perf_counter() - started, replies.count(b"-ERR")


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    allowed, _ = seconds_for(b"billing.invoice", count)
    denied, errors = seconds_for(b"billing.admin.x", count)
    print(f"{count} PUBs: allowed {allowed * 1e6 / count:.2f} us each, "
          f"denied {denied * 1e6 / count:.2f} us each ({errors} -ERRs)")


if __name__ == "__main__":
    main()
