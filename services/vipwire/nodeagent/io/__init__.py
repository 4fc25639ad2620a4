"""The node agent's adapters to the node: the ``Applier`` seam (``apply``),
the Linux applier (``linux``) and its rtnetlink socket (``_rtnl``).
"""
