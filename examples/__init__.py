"""Examples of ortho_optax: digits classifiers, a byte-level LM, comparisons."""
