"""The node agent's adapters: the ``Applier`` seam to the node (``apply``), the
Linux applier (``linux``) and its rtnetlink socket (``_rtnl``), the errors both
appliers raise (``errors``), each apply traced and counted (``writing``), and
the ``NodeApplied`` reports to the bus (``reporting``).
"""
