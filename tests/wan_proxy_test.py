#!/usr/bin/env python3
"""Measures tests/wan_proxy.c in front of an echo/sink/source server of its own.

usage: wan_proxy_test.py PATH_TO_WAN_PROXY

Checks: round trips gain 2 x latency (and stay small without it); a rate cap
holds throughput each way within [50%, 105%] of the cap (the lower bounds
here are loose on purpose: a busy 2-core CI machine may slow the proxy, never
speed it past its cap or under its latency); 10 MB of random bytes
come back identical through latency and a cap, with half-close forwarded;
20 connections at once; a peer reset reaching the other side; the statistics
printed at SIGTERM equal the bytes sent; bad arguments refused naming the flag.
Every proxy is started and stopped by its PID. Exit 0: pass; 1: a failure.
"""

import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

PROXY = sys.argv[1]
FAILURES = []
RUNNING = []  # proxies started and not yet stopped, killed by PID if a case dies


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


# ------------------------------------------------------------------ the server
# The first byte of a connection picks its mode:
#   E: echo every byte; on end of stream, shut down the write side
#   S: sink; on end of stream, answer the byte count (8 bytes, big endian)
#   G + 8-byte count: send that many bytes, then close
#   R: reset the connection at once (close with SO_LINGER 0)

def serve_conn(c):
    try:
        mode = c.recv(1)
        if mode == b"E":
            while True:
                b = c.recv(1 << 16)
                if not b:
                    c.shutdown(socket.SHUT_WR)
                    break
                c.sendall(b)
        elif mode == b"S":
            c.sendall(struct.pack(">Q", drain(c)))
        elif mode == b"G":
            hdr = b""
            while len(hdr) < 8:
                hdr += c.recv(8 - len(hdr))
            left = struct.unpack(">Q", hdr)[0]
            block = b"x" * (1 << 16)
            while left:
                k = min(left, len(block))
                c.sendall(block[:k])
                left -= k
        elif mode == b"R":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    finally:
        c.close()


def start_server():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)

    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=serve_conn, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return s.getsockname()[1]


# ------------------------------------------------------------------ the proxy

class Proxy:
    def __init__(self, target_port, *args):
        self.dir = tempfile.mkdtemp(prefix="wan_proxy_test.")
        pf = os.path.join(self.dir, "port")
        self.errf = open(os.path.join(self.dir, "stderr"), "w+")
        self.p = subprocess.Popen([PROXY, "--listen", "127.0.0.1:0", "--connect",
                                   "127.0.0.1:%d" % target_port, "--port-file", pf, *args],
                                  stderr=self.errf)
        RUNNING.append(self.p)
        deadline = time.monotonic() + 5
        while not os.path.exists(pf):
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("wan_proxy did not start: " + self.stderr())
            time.sleep(0.01)
        self.port = int(open(pf).read())

    def connect(self, mode):
        c = socket.create_connection(("127.0.0.1", self.port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.settimeout(20)  # a lost byte or end of stream fails the case, not hangs it
        c.sendall(mode)
        return c

    def stderr(self):
        self.errf.seek(0)
        return self.errf.read()

    def stop(self):
        """SIGTERM by PID; returns (exit code, stderr)."""
        self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
            check(False, "wan_proxy stops within 10 s of SIGTERM")
        RUNNING.remove(self.p)
        err = self.stderr()
        self.errf.close()
        for f in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, f))
        os.rmdir(self.dir)
        return rc, err


def drain(c, h=None):
    """Reads c to the end of its stream: the bytes counted (and fed to h)."""
    n = 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            return n
        if h is not None:
            h.update(b)
        n += len(b)


def recv_exact(c, n):
    buf = bytearray()
    while len(buf) < n:
        b = c.recv(n - len(buf))
        if not b:
            raise RuntimeError("end of stream after %d of %d bytes" % (len(buf), n))
        buf += b
    return bytes(buf)


def round_trips(proxy, count=6):
    c = proxy.connect(b"E")
    recv_exact(c, 0)
    rtts = []
    for i in range(count):
        t0 = time.monotonic()
        c.sendall(b"ping%02d" % i)
        got = recv_exact(c, 6)
        rtts.append(time.monotonic() - t0)
        if got != b"ping%02d" % i:
            check(False, "echo returns the message")
    c.close()
    return sorted(rtts)


# ------------------------------------------------------------------ cases

def case_latency(server):
    plain = Proxy(server)
    rtt0 = round_trips(plain)
    plain.stop()
    check(rtt0[len(rtt0) // 2] < 0.05,
          "without latency the median round trip is small: %.2f ms < 50 ms" % (rtt0[len(rtt0) // 2] * 1e3))

    slow = Proxy(server, "--latency-ms", "50")
    rtt = round_trips(slow)
    slow.stop()
    check(rtt[0] >= 0.100,
          "with --latency-ms 50 every round trip is >= 100 ms: shortest %.1f ms" % (rtt[0] * 1e3))
    med = rtt[len(rtt) // 2]
    check(med < 0.300, "with --latency-ms 50 the median round trip is < 300 ms: %.1f ms" % (med * 1e3))


def case_rate(server):
    size = 5 * 1000 * 1000
    for direction in ("client->target", "target->client"):
        p = Proxy(server, "--rate-mbit", "100")
        if direction == "client->target":
            c = p.connect(b"S")
            t0 = time.monotonic()
            block = b"y" * (1 << 16)
            left = size
            while left:
                k = min(left, len(block))
                c.sendall(block[:k])
                left -= k
            c.shutdown(socket.SHUT_WR)
            n = struct.unpack(">Q", recv_exact(c, 8))[0]
            dt = time.monotonic() - t0
            check(n == size, "the sink received all %d bytes (%d)" % (size, n))
        else:
            c = p.connect(b"G" + struct.pack(">Q", size))
            t0 = time.monotonic()
            n = drain(c)
            dt = time.monotonic() - t0
            check(n == size, "the source's %d bytes all arrived (%d)" % (size, n))
        c.close()
        p.stop()
        mbit = n * 8 / dt / 1e6
        check(50 <= mbit <= 105,
              "--rate-mbit 100, %s: %.1f Mbit/s for 5 MB lies within [50, 105]" % (direction, mbit))


def case_integrity(server):
    payload = os.urandom(10 * 1000 * 1000)
    p = Proxy(server, "--latency-ms", "20", "--rate-mbit", "400")
    c = p.connect(b"E")

    def send():
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)  # the echo ends its stream only when it sees ours end

    t = threading.Thread(target=send)
    t.start()
    h = hashlib.sha256()
    n = drain(c, h)
    t.join()
    c.close()
    check(n == len(payload), "10 MB through the proxy and back: %d bytes returned" % n)
    check(h.hexdigest() == hashlib.sha256(payload).hexdigest(),
          "the returned bytes are identical (sha256), and the half-close came through")

    # 20 connections at once, interleaved
    conns = [p.connect(b"E") for _ in range(20)]
    msgs = [os.urandom(100 + 37 * i) for i in range(20)]
    for c, m in zip(conns, msgs):
        c.sendall(m)
    ok = all(recv_exact(c, len(m)) == m for c, m in zip(conns, msgs))
    for c in conns:
        c.close()
    check(ok, "20 connections at once each get their own bytes back")

    # a reset by the target reaches the client as a reset
    c = p.connect(b"R")
    try:
        got = c.recv(10)
        reset = False
        print("     (after the target's reset the client read %r)" % got)
    except ConnectionResetError:
        reset = True
    c.close()
    check(reset, "the target's reset reaches the client as a reset")

    time.sleep(0.2)
    rc, err = p.stop()
    check(rc == 0, "SIGTERM stops the proxy with exit code 0 (%d)" % rc)
    stats = [l for l in err.splitlines() if "bytes client->target" in l]
    print("     " + (stats[0] if stats else "no statistics line in: " + err))
    sent = 1 + len(payload) + sum(1 + len(m) for m in msgs) + 1
    back = len(payload) + sum(len(m) for m in msgs)
    want = "bytes client->target %d, target->client %d" % (sent, back)
    check(bool(stats) and want in stats[0], "the statistics at exit say '%s'" % want)
    check(bool(stats) and "22 connections" in stats[0], "the statistics count 22 connections")


def case_bad_args(server):
    target = "127.0.0.1:%d" % server
    good = ["--listen", "127.0.0.1:0", "--connect", target]
    cases = [
        (good + ["--latency-ms", "abc"], "--latency-ms"),
        (good + ["--latency-ms", "-5"], "--latency-ms"),
        (good + ["--latency-ms", "10x"], "--latency-ms"),
        (good + ["--latency-ms", " 10"], "--latency-ms"),
        (good + ["--latency-ms", "600001"], "--latency-ms"),
        (good + ["--latency-ms", "99999999999999999999999"], "--latency-ms"),
        (good + ["--latency-ms"], "--latency-ms"),
        (good + ["--rate-mbit", "0"], "--rate-mbit"),
        (good + ["--buffer-kib", "0"], "--buffer-kib"),
        (good + ["--buffer-kib", "65537"], "--buffer-kib"),
        (good + ["--rate-mbit", "nan"], "--rate-mbit"),
        (good + ["--rate-mbit", "1e3"], "--rate-mbit"),
        (good + ["--rate-mbit", "-1"], "--rate-mbit"),
        (good + ["--rate-mbit", "1.2.3"], "--rate-mbit"),
        (good + ["--rate-mbit", ""], "--rate-mbit"),
        (good + ["--port-file", ""], "--port-file"),
        (good + ["--port-file", "/nonexistent-dir/port"], "--port-file"),
        (["--listen", "127.0.0.1", "--connect", target], "--listen"),
        (["--listen", "127.0.0.1:65536", "--connect", target], "--listen"),
        (["--listen", "[::1:0", "--connect", target], "--listen"),
        (["--listen", "127.0.0.1:0", "--connect", "127.0.0.1:0"], "--connect"),
        (["--listen", "127.0.0.1:0", "--connect", "127.0.0.1:x"], "--connect"),
        (["--listen", "127.0.0.1:0"], "--connect"),
        (["--connect", target], "--listen"),
        (good + ["--listen", "127.0.0.1:0"], "--listen"),
        (good + ["--bogus", "1"], "--bogus"),
    ]
    for args, flag in cases:
        try:
            r = subprocess.run([PROXY, *args], capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:  # run() has killed it
            check(False, "%s refused: the proxy ran on instead" % " ".join(args))
            continue
        check(r.returncode != 0 and flag in r.stderr and r.stderr.count("\n") == 1,
              "%s refused (exit %d), naming %s: %s" % (" ".join(args[4:] if args[:4] == good else args),
                                                      r.returncode, flag, r.stderr.strip()))
    r = subprocess.run([PROXY, "--help"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 0 and all(f in r.stdout for f in
                                    ("--listen", "--connect", "--latency-ms", "--rate-mbit", "--port-file")),
          "--help exits 0 and describes every flag")


def main():
    server = start_server()
    t0 = time.monotonic()
    try:
        for case in (case_bad_args, case_latency, case_rate, case_integrity):
            case(server)
    finally:
        for p in RUNNING:
            p.kill()
            p.wait()
    print("%d failure(s) in %.1f s" % (len(FAILURES), time.monotonic() - t0))
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
