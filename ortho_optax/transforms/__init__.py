"""Transforms: optax GradientTransformations, one idea each."""
