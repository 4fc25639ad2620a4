"""The node agent's adapters: the ``Applier`` seam to the node (``apply``), the
Linux applier (``linux``) and its rtnetlink socket (``_rtnl``), and the
``NodeApplied`` reports to the bus (``reporting``).
"""
