"""ipam's adapters: the KV ledger, the stream, the waiting queue, reload, control, metrics."""
