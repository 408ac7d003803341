"""Request scheduling of the control plane: where requests go and in what order they run.

The ``length-aware`` router (:class:`~dopd.control.routing.length_aware.LengthAwareRouter`) is
registered in :data:`dopd.control.routing.router.ROUTERS` and built from a spec such as
``length-aware:bypass=off`` (:func:`dopd.control.routing.router.make_router`); its options are
:class:`~dopd.control.routing.options.LengthAwareOptions`.
"""

from dopd.control.routing.lanes import LengthWindow
from dopd.control.routing.length_aware import LengthAwareRouter
from dopd.control.routing.options import LengthAwareOptions, parse_options

__all__ = ["LengthAwareOptions", "LengthAwareRouter", "LengthWindow", "parse_options"]
