"""Live serving: an OpenAI-compatible front end over worker processes with P/D disaggregation.

``dopd.serve.server.serve(config)`` runs it until SIGINT/SIGTERM; ``dopd.serve.api.create_app``
builds the FastAPI app over a started :class:`~dopd.serve.cluster.LocalCluster`. Workers
(:mod:`dopd.serve.worker`) run the engine loop; :mod:`dopd.serve.channels` carries control
messages and KV between processes over ZMQ; :mod:`dopd.serve.controller` drives the same
cluster policies as the simulator on the wall clock.
"""

from dopd.serve.serve_config import ServeConfig

__all__ = ["ServeConfig"]
