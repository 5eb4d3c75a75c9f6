"""Engines: pure functions on arrays shaped (..., m, n); no optax, no pytrees."""
