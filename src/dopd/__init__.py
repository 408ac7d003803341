"""dopd: LLM serving with dynamic prefill/decode disaggregation."""

__version__ = "0.1.0"
