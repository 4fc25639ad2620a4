"""The all-in-one stack: every vipwire service over one embedded NATS server."""

from vipwire.allinone.stack import Stack, StackSettings, cluster_name

__all__ = ["Stack", "StackSettings", "cluster_name"]
