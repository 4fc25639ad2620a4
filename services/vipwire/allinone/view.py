"""What the operator sees in ``vipwire up``: one row per Service, from the bus.

A plain core-NATS subscription on ``vipwire.>``: it observes, never consumes,
so it changes nothing for the services.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from vipwire.contracts import (
    LbFailed,
    LbProgrammed,
    LbRemoved,
    MalformedMessage,
    NodeApplied,
    ServiceGone,
    ServiceRef,
    ServiceRejected,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    decode,
)

log = logging.getLogger("vipwire.allinone.view")


class Row(msgspec.Struct, kw_only=True):
    cluster: str
    namespace: str
    name: str
    vips: tuple[str, ...] = ()
    appliance: str = ""
    members: int = 0
    state: str = "pending"
    detail: str = ""


class BusView:
    """Service → VIP → programmed → nodes applied, kept up to date from the bus."""

    def __init__(self) -> None:
        self.rows: dict[ServiceRef, Row] = {}
        # cluster -> node -> VIPs that node reports applied
        self.applied: dict[str, dict[str, frozenset[str]]] = {}
        #: Messages taken in so far: the live table redraws only when this moves.
        self.changes = 0
        self._sub: Subscription | None = None

    async def start(self, nc: NatsClient) -> None:
        self._sub = await nc.subscribe("vipwire.>", cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    def _row(self, cluster: str, namespace: str, name: str) -> Row:
        key = ServiceRef(cluster, namespace, name)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Row(cluster=cluster, namespace=namespace, name=name)
        return row

    async def _on_msg(self, msg: Msg) -> None:
        self.apply(msg.subject, msg.data)

    def apply(self, subject: str, data: bytes) -> None:
        """Take one message of the stream into the rows (unreadable ones are skipped)."""
        try:
            m = decode(subject, data)
        except MalformedMessage:
            return
        self.changes += 1
        match m:
            case NodeApplied():
                self.applied.setdefault(m.cluster, {})[m.node] = frozenset(m.vips)
            case ServiceSnapshot():
                row = self._row(m.cluster, m.namespace, m.name)
                if m.deleting:
                    row.state = "deleting"
                elif row.state == "rejected":
                    row.state, row.detail = "pending", ""  # fixed: asks again
            case ServiceRejected():
                row = self._row(m.cluster, m.namespace, m.name)
                row.state, row.detail = "rejected", f"{m.reason}: {m.message}"
            case ServiceGone():
                self.rows.pop(ServiceRef(m.cluster, m.namespace, m.name), None)
            case VipAssigned():
                row = self._row(m.cluster, m.namespace, m.name)
                row.vips = m.vips
                if row.state in ("pending", "failed"):
                    row.state, row.detail = "assigned", ""
            case VipFailed():
                row = self._row(m.cluster, m.namespace, m.name)
                row.state, row.detail = "failed", m.message
            case LbProgrammed():
                row = self._row(m.cluster, m.namespace, m.name)
                row.vips, row.appliance, row.members = m.vips, m.appliance, len(m.members)
                row.state, row.detail = "programmed", ""
            case LbFailed():
                row = self._row(m.cluster, m.namespace, m.name)
                row.state, row.detail = "appliance-failed", m.message
            case LbRemoved():
                self._row(m.cluster, m.namespace, m.name).state = "removed"
            case VipReleased():
                self.rows.pop(ServiceRef(m.cluster, m.namespace, m.name), None)
            case _:
                pass

    def nodes_applied(self, row: Row) -> tuple[int, int]:
        """(nodes serving all the row's VIPs, nodes reporting) in the row's cluster."""
        nodes = self.applied.get(row.cluster, {})
        serving = sum(1 for vips in nodes.values() if row.vips and set(row.vips) <= vips)
        return serving, len(nodes)

    def render(self, statuses: Mapping[ServiceRef, list[str]]) -> str:
        """A fixed-width table; ``statuses`` holds the ingress IPs the API shows."""
        header = (
            f"{'CLUSTER':<9} {'SERVICE':<24} {'VIP':<16} {'STATE':<17} "
            f"{'APPLIANCE':<10} {'MEMBERS':>7} {'APPLIED':>8} {'STATUS':<16}"
        )
        lines = [header, "-" * len(header)]
        for key in sorted(self.rows):
            row = self.rows[key]
            serving, reporting = self.nodes_applied(row)
            status = ",".join(statuses.get(key, [])) or "-"
            lines.append(
                f"{row.cluster:<9} {row.namespace + '/' + row.name:<24} "
                f"{','.join(row.vips) or '-':<16} {row.state:<17} {row.appliance or '-':<10} "
                f"{row.members:>7} {f'{serving}/{reporting}':>8} {status:<16}"
            )
            if row.detail:
                lines.append(f"{'':<9} └ {row.detail}")
        return "\n".join(lines)
