"""`python -m checks.bench vae`: one VAE training step, scratch against PyTorch.

A step is what a training run repeats: forward, backward, and an Adam update, on the same
batch of 128 digits, the same noise and the same initial weights (Bernoulli decoder, hidden
128, latent 2, tanh). Scratch: scratch/vae.py + scratch/optim.py. PyTorch: the ports.torch
`VAE` module, `loss.backward()` and `torch.optim.Adam`. Timed with checks/bench.py's
interleaved method, in float64 (what the training runs use) and in float32.
"""

import numpy as np

from scratch import vae as V
from scratch.data import load_digits
from scratch.optim import Adam

BATCH = 128


def vae_group(rng, dtype):
    import torch

    from ports.torch.vae import to_torch_vae

    config = V.VAEConfig(z_dim=2, hidden=128)
    x = load_digits("train", dtype=dtype)[0][:BATCH]  # (B, D)
    eps = rng.standard_normal((BATCH, config.z_dim)).astype(dtype)  # (B, Z)
    params = V.init_vae(config, np.random.default_rng(0), dtype=dtype)
    module = to_torch_vae(params, config)
    scratch_optimizer, torch_optimizer = Adam(1e-3), torch.optim.Adam(module.parameters(), lr=1e-3)
    tx, teps = torch.from_numpy(x), torch.from_numpy(eps)

    def scratch_step():
        output, cache = V.vae_forward(x, params, eps, config)
        scratch_optimizer.step(params, V.vae_backward(1.0, cache))
        return output.loss

    def torch_step():
        torch_optimizer.zero_grad()
        loss = module(tx, teps).loss
        loss.backward()
        torch_optimizer.step()
        return loss

    d, h, z = config.x_dim, config.hidden, config.z_dim
    forward = 2.0 * BATCH * (d * h + 2 * h * z + z * h + h * d)  # the five products of the forward
    flops = 3.0 * forward  # the backward does two products for each of the forward's
    count = f"5 forward products, 10 backward: 3 × 2·B·(DH + 2HZ + ZH + HD) = {flops / 1e6:.1f} MFLOP"
    title = f"VAE training step (forward + backward + Adam)  B={BATCH} D={d} H={h} Z={z} {np.dtype(dtype).name}"
    return title, count, {"scratch": (scratch_step, flops), "torch": (torch_step, flops)}, "torch", 1.5


def bench_vae(args, report):
    rng = np.random.default_rng(args.seed)
    met = [report(*vae_group(rng, dtype), args, rng) for dtype in (np.float64, np.float32)]
    return all(met)
