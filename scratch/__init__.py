"""Generative models from scratch: pure NumPy, every gradient derived by hand.

Each differentiable op `name` is a pair: `name_forward(...) -> (out, cache)` and
`name_backward(dout, cache) -> gradients`, in the order of the forward's array inputs.
"""

from scratch import allocator as _allocator  # noqa: F401  (freed memory kept for the next step: scratch/allocator.py)
