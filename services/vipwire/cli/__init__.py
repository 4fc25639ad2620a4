"""The ``vipwire`` command line."""
