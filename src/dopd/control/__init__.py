"""The DOPD control plane: monitor, forecast, P/D ratio solver, manager and router.

Clock-agnostic and side-effect free where possible: the same objects run in the simulator
(virtual time) and in the live system (wall clock).
"""
