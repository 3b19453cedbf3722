#!/usr/bin/env python3
"""A userspace delay line between two network namespaces, for kernels without tc netem.

    delayline.py NS_A DEV_A NS_B DEV_B ONE_WAY_DELAY_MS [LIMIT_MIB]

Creates TUN device DEV_A in namespace NS_A and DEV_B in NS_B (names from `ip netns`), prints
"ready", then copies every IP packet read from one device to the other ONE_WAY_DELAY_MS later,
in both directions (so the round-trip time grows by twice the delay). Up to LIMIT_MIB (default
128) MiB may wait in each direction; packets beyond that are dropped and counted, like netem's
`limit`. The caller assigns addresses and a large MTU (64 KiB packets keep the per-packet cost
of this Python loop low). The devices disappear when this process exits. On SIGTERM it prints
the packet, byte and drop counts to stderr.
"""
import collections
import ctypes
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF, IFF_TUN, IFF_NO_PI, CLONE_NEWNET = 0x400454CA, 0x0001, 0x1000, 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def enter(ns):
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {ns}")
    os.close(fd)


def tun(ns, name):
    enter(ns)  # a TUN device is created in the network namespace of the process
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    ns_a, dev_a, ns_b, dev_b, delay_ms = sys.argv[1:6]
    limit = int(sys.argv[6]) << 20 if len(sys.argv) > 6 else 128 << 20
    delay = float(delay_ms) / 1000.0
    fa, fb = tun(ns_a, dev_a), tun(ns_b, dev_b)
    out = {fa: fb, fb: fa}
    queue = {fa: collections.deque(), fb: collections.deque()}
    queued = {fa: 0, fb: 0}
    stats = {"packets": 0, "bytes": 0, "dropped": 0}

    def bye(*_):
        print("delayline: " + " ".join(f"{k}={v}" for k, v in stats.items()), file=sys.stderr, flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)
    ep = select.epoll()
    ep.register(fa, select.EPOLLIN)
    ep.register(fb, select.EPOLLIN)
    print("ready", flush=True)
    read, write, mono = os.read, os.write, time.monotonic
    while True:
        heads = [q[0][0] for q in queue.values() if q]
        timeout = max(0.0, min(heads) - mono()) if heads else -1
        events = ep.poll(timeout)
        now = mono()
        due = now + delay
        for fd, _ in events:
            q = queue[fd]
            for _ in range(512):
                try:
                    p = read(fd, 65600)
                except BlockingIOError:
                    break
                if queued[fd] + len(p) > limit:
                    stats["dropped"] += 1
                    continue
                queued[fd] += len(p)
                q.append((due, p))
        for fd, q in queue.items():
            o = out[fd]
            while q and q[0][0] <= now:
                p = q.popleft()[1]
                queued[fd] -= len(p)
                try:
                    write(o, p)
                    stats["packets"] += 1
                    stats["bytes"] += len(p)
                except OSError:
                    stats["dropped"] += 1


if __name__ == "__main__":
    main()
