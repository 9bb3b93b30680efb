"""Cost of a denial as a client sees it, against `make run`'s demo (publisher identity, port 14001).

Sends N PUBs and a PING and times until the PONG: once to an allowed subject, once to a denied one.
Each denied PUB is replaced upstream by a PING whose PONG natsguard turns into the -ERR, and is
logged as one audit line. Usage: .venv/bin/python scripts/deny-cost.py [N]
"""
import socket, sys, time
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
def run(subject):
    s = socket.create_connection(("127.0.0.1", 14001)); s.recv(4096)
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
    buf = b""
    while b"PONG" not in buf: buf += s.recv(65536)
    frame = b"PUB " + subject + b" 16\r\n0123456789abcdef\r\n"
    payload = frame * N + b"PING\r\n"
    t = time.perf_counter(); s.sendall(payload); buf = b""
    while not buf.endswith(b"PONG\r\n"): buf += s.recv(1 << 20)
    dt = time.perf_counter() - t; s.close()
    return dt, buf.count(b"-ERR")
for _ in range(2):
    a, _ = run(b"billing.invoice"); d, errs = run(b"billing.admin.x")
    print(f"N={N} allowed: {a*1e6/N:.2f} us/frame   denied: {d*1e6/N:.2f} us/frame ({errs} -ERRs)")
