"""How optimizer state is stored: block-wise quantized arrays, their codes."""
