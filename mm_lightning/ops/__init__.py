"""Low-level operations shared by the backbones: attention backends, RoPE, packed-sequence masks."""
