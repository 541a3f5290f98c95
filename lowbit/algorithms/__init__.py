"""Algorithms: one package per algorithm = its Config + handler (math stays in lowbit.quant)."""
