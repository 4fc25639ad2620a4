"""The packet lab: real hosts made of network namespaces, real packets through vipwire.

``topology`` plans (pure), ``netbuild`` builds it with ``ip``, ``traffic``
serves and sends HTTP inside it, ``dsr`` runs the whole pipeline on it and
``bench`` times the node agent's Linux applier.
"""

from vipwire.lab.dsr import DsrLab, run_dsr
from vipwire.lab.netbuild import LabError, missing_requirements
from vipwire.lab.topology import LabPlan, plan_lab

__all__ = ["DsrLab", "LabError", "LabPlan", "missing_requirements", "plan_lab", "run_dsr"]
