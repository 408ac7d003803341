"""dopd as the control plane of a vLLM fleet: ``vllm serve`` instances (launched or attached)
driven by the shared request flow through vLLM's P/D disaggregation protocol (NixlConnector).
See ``docs/vllm.md``; :mod:`~dopd.serve.vllm.fleet`, :mod:`~dopd.serve.vllm.instance`."""
