"""The network emulation's pure parts: impairment settings and the NFQUEUE netlink
messages of the packet delay, checked against the kernel's struct layouts
(include/uapi/linux/netfilter/nfnetlink_queue.h) written out independently here."""

from __future__ import annotations

import socket
import struct

import pytest

from fedpriv.deployment.impairment import Impairment
from fedpriv.deployment.packet_delay import (
    NF_ACCEPT,
    NFQA_PACKET_HDR,
    NFQA_VERDICT_HDR,
    NFQNL_MSG_VERDICT_BATCH,
    PacketDelay,
    _attribute,
    _attributes,
    _message,
)
from fedpriv.errors import ConfigError


def test_an_impairment_names_every_bad_value_and_its_range() -> None:
    with pytest.raises(ConfigError) as error:
        Impairment(delay_ms=-1, loss_percent=100, rate_mbit=0)
    message = str(error.value)
    assert "delay_ms=-1 must be in 0..60000" in message
    assert "loss_percent=100 must be in [0, 100)" in message
    assert "rate_mbit=0 must be in (0, 100000]" in message


def test_netem_gets_the_three_impairments_in_its_own_units() -> None:
    assert Impairment(delay_ms=100, loss_percent=1, rate_mbit=10).netem_arguments() == [
        "netem", "delay", "100ms", "loss", "1%", "rate", "10mbit",
    ]  # fmt: skip


def test_a_batch_verdict_is_the_kernels_layout() -> None:
    """nlmsghdr (16 bytes, host order), nfgenmsg (family, version, queue big-endian),
    then NFQA_VERDICT_HDR = {verdict, id}, both big-endian."""
    packet_id, queue = 0x01020304, 7
    verdict = _attribute(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
    message = _message(NFQNL_MSG_VERDICT_BATCH, queue, verdict, seq=5, ack=False)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", message)
    assert (length, kind, flags, seq, pid) == (len(message), (3 << 8) | 3, 1, 5, 0)
    assert message[16:20] == bytes([socket.AF_UNSPEC, 0, 0, 7])
    assert message[20:24] == struct.pack("=HH", 12, NFQA_VERDICT_HDR)
    assert message[24:] == b"\x00\x00\x00\x01\x01\x02\x03\x04"


def test_attributes_are_padded_to_four_bytes_and_read_back() -> None:
    data = _attribute(NFQA_PACKET_HDR, b"\x00\x00\x00\x2a\x08\x00\x03") + _attribute(9, b"ab")
    assert len(data) == 12 + 8
    found = _attributes(data)
    assert struct.unpack_from("!I", found[NFQA_PACKET_HDR])[0] == 42
    assert found[9] == b"ab"
    # A nested or byte-order flag on the type does not hide the attribute.
    assert _attributes(struct.pack("=HH", 8, 0x8000 | 1) + b"abcd") == {1: b"abcd"}


def test_the_packet_delay_refuses_impossible_settings() -> None:
    with pytest.raises(ValueError, match=r"queue=70000 must be in 0\.\.65535"):
        PacketDelay(70000, 0.1)
    with pytest.raises(ValueError, match="delay=-1 must be >= 0"):
        PacketDelay(1, -1)
