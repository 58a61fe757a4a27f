"""`python -m checks.bench diffusion`: one denoiser training step, scratch against the PyTorch port:
the mixtures' MLP (float32 and float64) and the digits' U-Net (float32).

A step is Algorithm 1 of Ho et al. (2020), what a training run repeats: x_t = q_sample(x_0, t, ε)
on a batch, the denoiser's forward and backward through the ε loss, and an Adam update. Same
denoiser (the mixtures' MLP at the default size: [x_t, emb(t)] of 2 + 64 → 3 × 256 SiLU → 2), same
batch of 256 ring points, steps t and noise, same weights. Scratch: scratch/diffusion.py's
denoiser_step + scratch/optim.py's Adam. PyTorch: ports/torch/diffusion.py's MLPDenoiser module,
`loss.backward()` and `torch.optim.Adam`, the step of ports/torch/train_diffusion.py. The U-Net:
scratch/unet.py (im2col convolutions, hand-written backward) against ports/torch/unet.py's module
(nn.Conv2d, nn.GroupNorm), a batch of 32 digits, their steps and words. Timed with
checks/bench.py's interleaved method, in float32 (what the training runs use) and float64.
"""

import numpy as np

from scratch import diffusion as Df
from scratch.data import sample_mixture
from scratch.optim import Adam
from scratch.train_diffusion import mlp_for_mixture

BATCH = 256


def mlp_group(rng, dtype):
    import torch

    from ports.torch.diffusion import _eps_loss, _q_sample, to_torch_mlp_denoiser

    denoiser, config = mlp_for_mixture()
    params = denoiser.init(config, np.random.default_rng(0), dtype)
    alphas_cumprod = Df.alpha_bar(Df.beta_schedule("linear", 1000))  # (T,) float64
    x0 = sample_mixture("ring", BATCH, rng, dtype)  # (B, 2)
    t = rng.integers(0, 1000, BATCH)  # (B,)
    eps = rng.standard_normal(x0.shape).astype(dtype)  # (B, 2)
    optimizer = Adam(1e-4)
    module = to_torch_mlp_denoiser(params, config)
    torch_optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    tx0, tt, teps, ta = (torch.from_numpy(a) for a in (x0, t, eps, alphas_cumprod))

    def scratch_step():
        loss, grads = Df.denoiser_step(x0, t, eps, params, alphas_cumprod, denoiser, config)
        optimizer.step(params, grads)
        return loss

    def torch_step():
        loss = _eps_loss(module(_q_sample(tx0, tt, teps, ta), tt), teps)
        torch_optimizer.zero_grad()
        loss.backward()
        torch_optimizer.step()
        return loss.detach()

    # the same work: one step from the same weights gives the same loss (then the two go their own ways)
    first, expected = float(torch_step()), scratch_step()
    assert abs(first - expected) <= 1e-4 * abs(expected), f"scratch's loss {expected} and torch's {first} differ"
    widths = (config.x_dim + config.time_dim, *config.hidden, config.x_dim)
    macs = [a * b for a, b in zip(widths[:-1], widths[1:])]
    # forward x·W, backward dW = xᵀ·dy and dx = dy·Wᵀ for every layer but the first (x_t needs no gradient)
    flops = 2.0 * BATCH * (3 * sum(macs) - macs[0])
    count = f"2·B·(3·Σ fan_in·fan_out − the first layer's dx) = {flops / 1e6:.1f} MFLOP"
    title = f"diffusion MLP denoiser training step (q_sample, ε loss, Adam)  B={BATCH} widths={widths} {np.dtype(dtype).name}"
    return title, count, {"scratch": (scratch_step, flops), "torch": (torch_step, flops)}, "torch", 1.5


def unet_group(rng, dtype):
    """The digit U-Net's step at its default size (scratch/guidance.py's DIGIT_UNET and batch), words and ∅ mixed."""
    import torch

    from ports.torch.diffusion import _eps_loss, _q_sample
    from ports.torch.unet import to_torch_unet
    from scratch import unet as U
    from scratch.guidance import DIGIT_RUN, DIGIT_UNET

    config, batch = DIGIT_UNET, DIGIT_RUN["batch_size"]
    params = U.init_unet(config, np.random.default_rng(0), dtype)
    alphas_cumprod = Df.alpha_bar(Df.beta_schedule("linear", config.num_steps))  # (T,) float64
    x0 = rng.uniform(-1.0, 1.0, (batch, 1, 28, 28)).astype(dtype)  # (B, 1, 28, 28): the work does not depend on the pixels
    t = rng.integers(0, config.num_steps, batch)  # (B,)
    cond = rng.integers(0, U.NULL + 1, batch)  # (B,) digit words and ∅
    eps = rng.standard_normal(x0.shape).astype(dtype)  # (B, 1, 28, 28)
    optimizer = Adam(1e-4)
    module = to_torch_unet(params, config)
    torch_optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    tx0, tt, tcond, teps, ta = (torch.from_numpy(a) for a in (x0, t, cond, eps, alphas_cumprod))

    def scratch_step():
        loss, grads = Df.denoiser_step(x0, t, eps, params, alphas_cumprod, U.UNET_DENOISER, config, cond)
        optimizer.step(params, grads)
        return loss

    def torch_step():
        loss = _eps_loss(module(_q_sample(tx0, tt, teps, ta), tt, tcond), teps)
        torch_optimizer.zero_grad()
        loss.backward()
        torch_optimizer.step()
        return loss.detach()

    first, expected = float(torch_step()), scratch_step()
    assert abs(first - expected) <= 1e-4 * abs(expected), f"scratch's loss {expected} and torch's {first} differ"
    # the convolutions' multiply-adds, (C_out · C_in · k²) per output pixel, forward; backward twice that
    c1, c2, c3 = config.channels
    full, half, quarter = 28 * 28, 14 * 14, 7 * 7
    convs = [(c1, 1, 9, full), (c2, c1, 9, half), (c3, c2, 9, quarter), (c1, c2, 1, half), (1, c1, 9, full)]
    for name, (c_in, c_out) in U.block_channels(config).items():
        pixels = {"enc": half, "mid": quarter, "dec": half, "full": full}[name]
        convs += [(c_out, c_in, 9, pixels), (c_out, c_out, 9, pixels)] + ([(c_out, c_in, 1, pixels)] if c_in != c_out else [])
    flops = 2.0 * 3 * batch * sum(a * b * k * n for a, b, k, n in convs)
    count = f"3 × 2·B·Σ C_out·C_in·k²·pixels over the convolutions = {flops / 1e6:.0f} MFLOP"
    title = (f"diffusion U-Net training step (q_sample, ε loss, Adam)  B={batch} channels={config.channels} 28×28 "
             f"{np.dtype(dtype).name}")
    return title, count, {"scratch": (scratch_step, flops), "torch": (torch_step, flops)}, "torch", 1.5


def bench_diffusion(args, report):
    rng = np.random.default_rng(args.seed)
    met = [report(*mlp_group(rng, dtype), args, rng) for dtype in (np.float32, np.float64)]
    met.append(report(*unet_group(rng, np.float32), args, rng))  # what the digit runs train in
    return all(met)
