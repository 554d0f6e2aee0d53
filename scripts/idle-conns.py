#!/usr/bin/env python3
# idle-conns.py BIN_DIR: the review's idle-connection attack against one controller process
# (issue 18): 3,000 keep-alive connections from one address, each after one GET /health,
# then left idle. Prints the controller's RSS before and with them, how many were served,
# and how many are still open 65 s later (api.idle_timeout defaults to 60 s). Loopback
# only; a throwaway data dir; ports 18580-18582.
import os, resource, socket, subprocess, sys, tempfile, time

resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
bindir, port = sys.argv[1], 18580
data = tempfile.mkdtemp(prefix="idle-conns-")
p = subprocess.Popen([os.path.join(bindir, "hypersdk-controller"), "--node-id", "m1", "--data-dir", data,
                      "--api-addr", f"127.0.0.1:{port}", "--raft-addr", f"127.0.0.1:{port+1}",
                      "--gossip-addr", f"127.0.0.1:{port+2}", "--log-level", "error"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rss_mib():
    for line in open(f"/proc/{p.pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024


try:
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                sys.exit("controller did not start")
            time.sleep(0.2)
    before = rss_mib()
    conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3000)]
    served = 0
    for s in conns:
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            served += s.recv(4096).startswith(b"HTTP/1.1 200")
        except OSError:
            pass
    print(f"rss before {before} MiB, with 3000 connections {rss_mib()} MiB, served {served}")
    time.sleep(65)
    still = 0
    for s in conns:
        s.setblocking(False)
        try:
            still += s.recv(1) != b""
        except BlockingIOError:
            still += 1
        except OSError:
            pass
    print(f"still open after 65 s: {still}")
finally:
    p.terminate()
    p.wait()
