"""What the bus last said about one Service: its ``vip`` and ``lb`` messages.

Pure. The watcher keeps one view per Service and judges every delivery
against it: a redelivery overtaken by a newer message changes nothing, and
what a message replaced is kept so that its Event is judged against the same
past however often it is delivered.
"""

from __future__ import annotations

import msgspec

from vipwire.contracts import LbFailed, LbMessage, LbProgrammed, LbRemoved, VipMessage


class BusView(msgspec.Struct, frozen=True, kw_only=True):
    """The last ``vip`` and ``lb`` messages of one Service, with their stream sequences.

    ``vip_before``/``lb_before`` are what they replaced, so that a
    redelivery of the same message (same sequence) is judged against the
    same past.
    """

    vip: VipMessage | None = None
    vip_seq: int = 0
    vip_before: VipMessage | None = None
    lb: LbMessage | None = None
    lb_seq: int = 0
    lb_before: LbMessage | None = None


def observe(view: BusView, message: VipMessage | LbMessage, seq: int) -> BusView:
    """The view after a delivery; an older message than the one held changes nothing."""
    if isinstance(message, LbProgrammed | LbFailed | LbRemoved):
        if seq <= view.lb_seq:
            return view
        return msgspec.structs.replace(view, lb=message, lb_seq=seq, lb_before=view.lb)
    if seq <= view.vip_seq:
        return view
    return msgspec.structs.replace(view, vip=message, vip_seq=seq, vip_before=view.vip)


def superseded(view: BusView, message: VipMessage | LbMessage, seq: int) -> bool:
    """Whether the view already holds a newer message of the same subject (the one at
    ``seq`` is a redelivery that came after it)."""
    if isinstance(message, LbProgrammed | LbFailed | LbRemoved):
        return seq < view.lb_seq
    return seq < view.vip_seq


def before(
    view: BusView, message: VipMessage | LbMessage, seq: int
) -> VipMessage | LbMessage | None:
    """What the message's subject said before the message at ``seq``."""
    if isinstance(message, LbProgrammed | LbFailed | LbRemoved):
        return view.lb_before if seq == view.lb_seq else view.lb
    return view.vip_before if seq == view.vip_seq else view.vip
