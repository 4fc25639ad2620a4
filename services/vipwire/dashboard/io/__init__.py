"""The dashboard's adapters: the bus reader, the status poller and the web app."""
