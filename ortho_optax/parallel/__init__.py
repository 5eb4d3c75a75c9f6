"""Parallel: where each routed matrix is orthogonalized; collective counting."""
