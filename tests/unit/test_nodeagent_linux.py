"""The Linux applier's pure parts: rtnetlink messages, ownership marks, sysctl paths."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from vipwire.nodeagent.io._rtnl import (
    IFA_LABEL,
    IFA_PROTO,
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTM_DELADDR,
    RTM_NEWADDR,
    KernelAddress,
    address_request,
    parse_address,
)
from vipwire.nodeagent.io.linux import ADDRESS_PROTO, LinuxApplier, kernel_marking, sysctl_path


class TestRtnetlink:
    def test_an_add_request_reads_back_as_the_address_it_adds(self) -> None:
        """The body we send parses (as a dump entry would) to the same address and marks."""
        flags, body = address_request(
            RTM_NEWADDR, index=1, address="2001:db8::10", prefix=128, proto=ADDRESS_PROTO
        )
        assert flags & NLM_F_CREATE and flags & NLM_F_EXCL
        assert parse_address(body) == KernelAddress(
            index=1, address="2001:db8::10", prefix=128, proto=ADDRESS_PROTO
        )

    def test_an_ipv4_label_marks_without_a_protocol(self) -> None:
        """The fallback mark: an IPv4 label, no IFA_PROTO attribute at all."""
        _, body = address_request(
            RTM_NEWADDR, index=1, address="198.51.100.10", prefix=32, label="lo:vw"
        )
        parsed = parse_address(body)
        assert parsed is not None and (parsed.label, parsed.proto) == ("lo:vw", None)
        assert struct.pack("=HH", 5, IFA_PROTO) not in body
        assert struct.pack("=HH", 10, IFA_LABEL) in body

    def test_a_delete_carries_no_marks_and_no_create_flags(self) -> None:
        """Removal names the address only."""
        flags, body = address_request(RTM_DELADDR, index=3, address="198.51.100.10", prefix=32)
        assert not flags & NLM_F_CREATE
        parsed = parse_address(body)
        assert parsed == KernelAddress(index=3, address="198.51.100.10", prefix=32)

    def test_garbage_is_not_an_address(self) -> None:
        """A short or foreign-family message parses to None."""
        assert parse_address(b"\x02") is None
        assert parse_address(struct.pack("=BBBBI", socket.AF_PACKET, 0, 0, 0, 1)) is None


class TestMarks:
    def test_address_protocol_from_linux_5_18(self) -> None:
        """Kernels that keep IFA_PROTO get it; older ones the label."""
        assert kernel_marking("6.1.0-13-amd64") == "proto"
        assert kernel_marking("5.18.0") == "proto"
        assert kernel_marking("5.15.0-91-generic") == "label"
        assert kernel_marking("garbage") == "label"

    def test_either_mark_means_ours_and_nothing_else_does(self) -> None:
        """Ours: our protocol, or our label; the kernel's own and planted addresses are not."""
        applier = LinuxApplier(marking="proto")
        ours = KernelAddress(index=1, address="198.51.100.1", prefix=32, proto=ADDRESS_PROTO)
        labelled = KernelAddress(index=1, address="198.51.100.2", prefix=32, label="lo:vw")
        planted = KernelAddress(index=1, address="203.0.113.250", prefix=32, label="lo")
        kernel = KernelAddress(index=1, address="::1", prefix=128, proto=1)
        assert applier.owns(ours) and applier.owns(labelled)
        assert not applier.owns(planted) and not applier.owns(kernel)

    def test_sysctl_keys_map_to_proc_paths(self) -> None:
        """A '/' in a key stands for a '.' in an interface name."""
        assert sysctl_path("net.ipv4.conf.all.arp_ignore") == Path(
            "/proc/sys/net/ipv4/conf/all/arp_ignore"
        )
        assert sysctl_path("net.ipv4.conf.eth0/100.arp_announce") == Path(
            "/proc/sys/net/ipv4/conf/eth0.100/arp_announce"
        )
