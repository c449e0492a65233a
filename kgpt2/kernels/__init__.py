"""The training step's own GPU kernels (JAX, Pallas and cuDNN), each behind a `train.*` switch with a jnp form
elsewhere: the fused loss, layer norms, q/k/v gradients, the decoder block that uses them, attention dropout.
"""
