"""A fixed packet delay for kernels without ``sch_netem``: packets held in the kernel's
NFQUEUE and released by this process after the delay.

``tc qdisc ... netem delay 100ms`` is the standard way to slow a link down, but some
kernels are built without netem (and without ``fq``, whose timestamps could do it in a
BPF program). Every kernel with nftables can hand packets to an NFQUEUE, where they
wait, still in the kernel, until a program gives each its verdict. This program gives
every packet of one queue the verdict ACCEPT ``delay`` seconds after it arrived, in
arrival order, so a TCP connection sees the added latency on each segment and ACK as
it would under netem. It speaks the queue's netlink protocol (``nfnetlink_queue``)
directly with the standard library; packets are never copied to user space (only their
IDs come up). Run it inside the network namespace whose nftables rules queue the
packets::

    ip netns exec NS python -m fedpriv.deployment.packet_delay --queue 7 --delay-ms 100

It is used by :mod:`fedpriv.deployment.impairment` where netem is missing.
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_CFG_MASK, NFQA_CFG_FLAGS = 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
#: GSO packets are queued whole rather than segmented first (fewer, cheaper verdicts).
NFQA_CFG_F_GSO = 4
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1
#: Packets the kernel holds for this queue before it drops new ones: a 10 Mbit/s link
#: holds about 85 full-size packets per 100 ms, a loopback-speed one far more.
QUEUE_MAXLEN = 65536
RECEIVE_BUFFER = 8 << 20
#: Printed once the queue is bound: packets queued from then on are delayed, not lost.
READY = "holding NFQUEUE"


def _attribute(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _message(kind: int, queue: int, attributes: bytes, *, seq: int, ack: bool) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", queue) + attributes
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    return (
        struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body
    )


def _attributes(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, offset)
        if size < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4 : offset + size]
        offset += (size + 3) & ~3
    return found


class PacketDelay:
    """The queue ``queue`` of this network namespace, each packet released after
    ``delay`` seconds."""

    def __init__(self, queue: int, delay: float) -> None:
        if not 0 <= queue <= 65535:
            raise ValueError(f"queue={queue} must be in 0..65535 (an NFQUEUE number)")
        if delay < 0:
            raise ValueError(f"delay={delay} must be >= 0 seconds")
        self.queue, self.delay = queue, delay
        self.held: collections.deque[tuple[float, int]] = collections.deque()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self._seq = 0
        self._configure()

    def _configure(self) -> None:
        """Bind the queue and ask for packet metadata only, as one acknowledged request."""
        attributes = (
            _attribute(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_UNSPEC))
            + _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
            + _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
            + _attribute(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
            + _attribute(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO))
        )
        self._seq += 1
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.queue, attributes, seq=self._seq, ack=True))
        reply = self.sock.recv(65536)
        kind = struct.unpack_from("=IH", reply)[1]
        if kind == NLMSG_ERROR and (error := struct.unpack_from("=i", reply, 16)[0]) != 0:
            raise OSError(-error, f"binding NFQUEUE {self.queue}: {os.strerror(-error)}")

    def run(self) -> None:
        """Hold and release packets until the process is stopped."""
        while True:
            timeout = None
            if self.held:
                timeout = max(0.0, self.held[0][0] - time.monotonic())
            if select.select([self.sock], [], [], timeout)[0]:
                self._receive()
            self._release(time.monotonic())

    def _receive(self) -> None:
        """Note every packet waiting on the socket with the time it is due."""
        while True:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            due = time.monotonic() + self.delay
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    break
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    header = _attributes(data[offset + 20 : offset + length]).get(NFQA_PACKET_HDR)
                    if header is not None:
                        self.held.append((due, struct.unpack_from("!I", header)[0]))
                offset += (length + 3) & ~3

    def _release(self, now: float) -> None:
        """ACCEPT every packet that is due, with one verdict for all of them (the queue
        is FIFO: a batch verdict covers every packet up to the ID it names)."""
        last = None
        while self.held and self.held[0][0] <= now:
            last = self.held.popleft()[1]
        if last is not None:
            self._seq += 1
            verdict = _attribute(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last))
            message = _message(
                NFQNL_MSG_VERDICT_BATCH, self.queue, verdict, seq=self._seq, ack=False
            )
            self.sock.send(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedpriv.deployment.packet_delay",
        description="Release each packet of an NFQUEUE after a fixed delay (netem's delay "
        "where the kernel has no netem).",
    )
    parser.add_argument("--queue", type=int, required=True, help="the NFQUEUE number")
    parser.add_argument("--delay-ms", type=float, required=True, help="added delay per packet")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        delay = PacketDelay(args.queue, args.delay_ms / 1000)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{READY} {args.queue}: each packet {args.delay_ms:g} ms", flush=True)
    delay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
