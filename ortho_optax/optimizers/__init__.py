"""Optimizers: named optax.chain aliases and what they share."""
