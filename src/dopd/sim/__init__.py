"""Discrete-event simulation of a disaggregated (or colocated) LLM serving cluster."""
