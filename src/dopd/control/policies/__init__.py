"""Cluster policies of the control plane: ``dopd`` (ours), and the ``reactive`` and
``sla-planner`` baselines. Each module registers its factory in
:data:`dopd.control.policies.base.POLICIES` when imported (listed in ``POLICY_MODULES``)."""
