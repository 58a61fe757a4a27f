"""`python -m checks.bench gan`: one GAN training step, scratch against the PyTorch port.

A step is what a training run repeats (Algorithm 1 of Goodfellow et al. with k = 1): a
discriminator update on a real batch and a noise batch, then a generator update through the
discriminator, each with Adam. Same model (the ring's: G 2→128×4→2, D packs 2 samples,
4→128→128→1), same batch of 256, same weights. Scratch: scratch/gan.py + scratch/optim.py.
PyTorch: ports/torch/gan.py's Generator and Discriminator modules, `loss.backward()` and
`torch.optim.Adam`, the loop of ports/torch/train.py. Timed with checks/bench.py's
interleaved method, in float32 (what the training runs use) and float64.
"""

import numpy as np

from scratch import gan as G
from scratch.data import sample_mixture
from scratch.optim import Adam
from scratch.train import gan_config_for

BATCH = 256


def gan_group(rng, dtype):
    import torch

    from ports.torch.gan import _discriminator_loss, _generator_loss, to_torch_gan

    config = gan_config_for("ring", pack=2)
    params = G.init_gan(config, np.random.default_rng(0), dtype)
    x = sample_mixture("ring", BATCH, rng, dtype)  # (B, 2)
    z_disc, z_gen = (rng.standard_normal((BATCH, config.z_dim)).astype(dtype) for _ in range(2))  # (B, Z)
    gen = {k: v for k, v in params.items() if k.startswith("gen.")}
    disc = {k: v for k, v in params.items() if k.startswith("disc.")}
    gen_optimizer, disc_optimizer = Adam(1e-4, (0.5, 0.999)), Adam(1e-4, (0.5, 0.999))
    generator, discriminator = to_torch_gan(params, config)
    torch_gen_optimizer = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.5, 0.999))
    torch_disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.5, 0.999))
    tx, tz_disc, tz_gen = (torch.from_numpy(a) for a in (x, z_disc, z_gen))

    def scratch_step():
        _, grads = G.discriminator_step(x, z_disc, params, config)
        disc_optimizer.step(disc, grads)
        loss, grads = G.generator_step(z_gen, params, config)
        gen_optimizer.step(gen, grads)
        return loss

    def torch_step():
        with torch.no_grad():
            fake = generator(tz_disc)
        torch_disc_optimizer.zero_grad()
        _discriminator_loss(discriminator(tx), discriminator(fake)).backward()
        torch_disc_optimizer.step()
        torch_gen_optimizer.zero_grad()
        loss = _generator_loss(discriminator(generator(tz_gen)), "non_saturating")
        loss.backward()
        torch_gen_optimizer.step()
        return loss

    g = (config.z_dim, *config.gen_hidden, config.x_dim)
    d = (config.pack * config.x_dim, *config.disc_hidden, 1)
    gen_macs = BATCH * sum(a * b for a, b in zip(g[:-1], g[1:]))  # one forward of G on B samples
    disc_macs = (BATCH // config.pack) * sum(a * b for a, b in zip(d[:-1], d[1:]))  # one forward of D on B samples
    # D step: G forward, D forward+backward on real and fake (3× each); G step: G and D forward+backward
    flops = 2.0 * (gen_macs + 2 * 3 * disc_macs + 3 * gen_macs + 3 * disc_macs)
    count = f"2·(G fwd + 2×3 D + 3 G + 3 D) multiply-adds = {flops / 1e6:.1f} MFLOP"
    title = f"GAN training step (D step + G step, Adam)  B={BATCH} G={g} D={d} {np.dtype(dtype).name}"
    return title, count, {"scratch": (scratch_step, flops), "torch": (torch_step, flops)}, "torch", 1.5


def bench_gan(args, report):
    rng = np.random.default_rng(args.seed)
    met = [report(*gan_group(rng, dtype), args, rng) for dtype in (np.float32, np.float64)]
    return all(met)
