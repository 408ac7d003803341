"""The one request-flow and role-change machine shared by the simulator and the live server.

Both drivers (:mod:`dopd.sim.cluster` and :mod:`dopd.serve.dispatch` /
:mod:`dopd.serve.controller`) make their decisions here and supply only their clock, their
runner and their KV transport:

- :mod:`dopd.control.flow.instances`: instance life cycle (ACTIVE -> DRAINING -> SWITCHING ->
  ACTIVE, STARTING, STOPPED), which policy action applies how (:func:`plan_action`), what a
  drain moves off the instance (:class:`DrainPlan`);
- :mod:`dopd.control.flow.requests`: where a request may be placed (:func:`placement_pools`)
  and the KV reservation order of hand-offs (:class:`HandoffQueue`);
- :mod:`dopd.control.flow.view`: the one function that builds a policy's
  :class:`~dopd.control.policies.base.ClusterView`.
"""
