"""The DCGAN (Radford, Metz and Chintala, 2016) in PyTorch: scratch/dcgan.py with torch ops, the backward by autograd.

Read it beside scratch/dcgan.py: the names, the arguments and the NumPy-in/NumPy-out interface of
every function are the same (`generator_forward`, `discriminator_step`, `update_stats`, …); each
forward records the graph and each backward replays it with `torch.autograd.grad`. After the
functions come the two networks the way PyTorch users write them, the seed's §5.1 with convolutions:

    Generator:      nn.Linear(Z, 2g·49, bias=False) → view (2g, 7, 7) → nn.BatchNorm2d → nn.ReLU
                    → nn.ConvTranspose2d(2g, g, 4, 2, 1, bias=False) → nn.BatchNorm2d → nn.ReLU
                    → nn.ConvTranspose2d(g, 1, 4, 2, 1) → nn.Tanh
    Discriminator:  nn.Conv2d(1, d, 4, 2, 1) → nn.LeakyReLU(0.2) → nn.Conv2d(d, 2d, 4, 2, 1, bias=False)
                    → nn.BatchNorm2d → nn.LeakyReLU(0.2) → nn.Flatten → nn.Linear(2d·49, 1)

with `to_torch_dcgan` / `from_torch_dcgan` to move weights and batch norm's running statistics
between them and the scratch layout, `train_dcgan_loop` (the plain loop a student reads first) and
`digit_grid` (generated digits tiled into one image). PyTorch's layouts are scratch's (scratch took
them): a convolution's weight (C_out, C_in, kh, kw), a transposed one's (C_in, C_out, kh, kw), NCHW
images; only nn.Linear stores its weight transposed, (out, in).

Batch norm, the torch way. An nn.BatchNorm2d in train() normalises with the batch's statistics and
moves its running buffers in place on every forward, with or without a gradient: exactly scratch's
update_stats after every training-mode forward (PyTorch's rule, the unbiased variance). In eval()
it uses the buffers only. The functions below keep scratch's split: a training-mode forward leaves
the statistics alone and `update_stats` applies the rule through F.batch_norm on copies.

Shape letters as in scratch: B batch, Z noise width, g the generator's width, d the discriminator's.
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ports.torch.attention import _leaf
from ports.torch.gan import _discriminator_loss, _generator_loss
from scratch.dcgan import (DISC_NAMES, GEN_NAMES, SIDE, DCGANConfig, _check_input, from_pixels,
                           init_dcgan, init_stats, parameter_shapes, to_pixels)
from scratch.gan import GENERATOR_LOSSES
from scratch.validate import check_flag, check_same_dtype

__all__ = [
    "DCGANConfig", "parameter_shapes", "init_dcgan", "init_stats", "generator_forward", "generator_backward",
    "discriminator_forward", "discriminator_backward", "update_stats", "discriminator_step", "generator_step",
    "to_pixels", "from_pixels", "Generator", "Discriminator", "to_torch_dcgan", "from_torch_dcgan",
    "train_dcgan_loop", "digit_grid",
]

Q = SIDE // 4  # 7: the side of the smallest maps


# ----------------------------------------------------------------------------------------------
# The networks on a dict of tensors in the scratch layout (shared by the functions below)
# ----------------------------------------------------------------------------------------------


def _batch_norm(h, p, bn, stats, seen):
    """Training mode (stats None): the batch's statistics; the input is kept in `seen` for update_stats."""
    if stats is None:
        seen[bn] = h.detach()
        # Alg. 1, Ioffe & Szegedy 2015: x̂ = (x − μ) / √(σ² + ε), y = γ x̂ + β, μ and biased σ² of the batch
        return F.batch_norm(h, None, None, p[f"{bn}.gamma"], p[f"{bn}.beta"], training=True)
    return F.batch_norm(h, stats[f"{bn}.running_mean"], stats[f"{bn}.running_var"], p[f"{bn}.gamma"],
                        p[f"{bn}.beta"], training=False)


def _generate(z, p, config, stats=None, seen=None):
    c = 2 * config.gen_width
    # the "project and reshape" of the paper's Fig. 1: a linear map of the noise, as 2g maps of 7×7
    h = (z @ p["gen.W1"]).view(len(z), c, Q, Q)  # (B, 2g, 7, 7), no bias: batch norm's β takes its place
    h = torch.relu(_batch_norm(h, p, "gen.bn1", stats, seen))  # (B, 2g, 7, 7)
    # 4×4 transposed convolution, stride 2, padding 1: o = 2(i − 1) − 2 + 4 = 2i
    h = F.conv_transpose2d(h, p["gen.W2"], None, stride=2, padding=1)  # (B, g, 14, 14)
    h = torch.relu(_batch_norm(h, p, "gen.bn2", stats, seen))  # (B, g, 14, 14)
    h = F.conv_transpose2d(h, p["gen.W3"], p["gen.b3"], stride=2, padding=1)  # (B, 1, 28, 28)
    return torch.tanh(h)  # (B, 1, 28, 28) in [−1, 1], no batch norm on G's output


def _discriminate(x, p, config, stats=None, seen=None):
    # no batch norm on D's input layer (§3); o = ⌊(i + 2·1 − 4) / 2⌋ + 1 = i / 2
    h = F.leaky_relu(F.conv2d(x, p["disc.W1"], p["disc.b1"], stride=2, padding=1), config.slope)  # (B, d, 14, 14)
    h = F.conv2d(h, p["disc.W2"], None, stride=2, padding=1)  # (B, 2d, 7, 7)
    h = F.leaky_relu(_batch_norm(h, p, "disc.bn2", stats, seen), config.slope)  # (B, 2d, 7, 7)
    return (h.reshape(len(h), -1) @ p["disc.W3"] + p["disc.b3"])[:, 0]  # (B,)


def _net(params, net, make):
    """{name: make(array)} for the parameters of one network ("gen" or "disc"), in scratch's order."""
    names = GEN_NAMES if net == "gen" else DISC_NAMES
    return {name: make(params[name]) for name in names}


def _tensors(stats):
    return None if stats is None else {name: torch.from_numpy(np.asarray(value)) for name, value in stats.items()}


class NetworkCache(NamedTuple):
    inputs: tuple  # the leaves: the network's input, then its parameters in scratch's order
    names: tuple  # the parameters' names
    out: torch.Tensor  # the output, still attached to its graph
    batch_norms: dict  # "gen.bn1" → the tensor that batch norm normalised, for update_stats


def _forward(network, data, params, config, stats, net):
    leaves = _net(params, net, _leaf)
    data = _leaf(data)
    seen = {}
    out = network(data, leaves, config, _tensors(stats), seen)
    if stats is not None:
        return out.detach().numpy(), None
    return out.detach().numpy(), NetworkCache((data, *leaves.values()), tuple(leaves), out, seen)


def _backward(dout, cache, what, needs_input_grad=True):
    if cache is None:
        raise ValueError(f"{what}_backward needs a training-mode forward's cache (stats=None); evaluation mode keeps none")
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    inputs = cache.inputs if needs_input_grad else cache.inputs[1:]  # the network's input first, then its parameters
    grads = list(torch.autograd.grad(cache.out, inputs, torch.as_tensor(dout, dtype=cache.out.dtype)))
    dx = grads.pop(0).numpy() if needs_input_grad else None
    return dx, {name: g.numpy() for name, g in zip(cache.names, grads)}


def generator_forward(z, params, config, stats=None):
    """G(z): noise z (B, Z) → images (B, 1, 28, 28) in [−1, 1]; stats None: training mode, else evaluation mode."""
    z = _check_input("z", z, (None, config.z_dim))
    check_same_dtype(z=z, params=params["gen.W1"])
    return _forward(_generate, z, params, config, stats, "gen")


def generator_backward(dx, cache):
    """Return (dz, grads of every "gen.*" parameter) for a training-mode forward."""
    return _backward(dx, cache, "generator")


def discriminator_forward(x, params, config, stats=None):
    """Logits l(x) of D(x) = σ(l): images x (B, 1, 28, 28) → (B,). stats: as generator_forward."""
    x = _check_input("x", x, (None, 1, SIDE, SIDE))
    check_same_dtype(x=x, params=params["disc.W1"])
    return _forward(_discriminate, x, params, config, stats, "disc")


def discriminator_backward(dlogits, cache, needs_input_grad=True):
    """Return (dx, grads of every "disc.*" parameter) for a training-mode forward; needs_input_grad False: dx is None."""
    return _backward(dlogits, cache, "discriminator", check_flag("needs_input_grad", needs_input_grad))


def _update(stats, seen, momentum):
    """PyTorch's rule on the tensors `seen` by batch norm: F.batch_norm(training=True) moves the buffers it is given."""
    new = dict(stats)
    for bn, h in seen.items():
        mean, var = (torch.tensor(stats[f"{bn}.{k}"]) for k in ("running_mean", "running_var"))  # copies
        with torch.no_grad():
            # r ← (1 − momentum) r + momentum · batch statistic, the variance unbiased: σ² · N / (N − 1)
            F.batch_norm(h, mean, var, training=True, momentum=momentum)
        new[f"{bn}.running_mean"], new[f"{bn}.running_var"] = mean.numpy(), var.numpy()
    return new


def update_stats(stats, cache, momentum=0.1):
    """The running statistics after one training-mode forward: a new dict, `stats` left unchanged."""
    return _update(stats, cache.batch_norms, momentum)


def discriminator_step(x_real, z, params, stats, config):
    """(loss, grads of every "disc.*" parameter, new stats): G(z), D(x_real), D(G(z)), each moving its statistics.

    Real and fake batches go through D separately, so batch norm never mixes them.
    """
    x_real, z = _check_input("x_real", x_real, (None, 1, SIDE, SIDE)), _check_input("z", z, (None, config.z_dim))
    gen = _net(params, "gen", torch.from_numpy)
    disc = _net(params, "disc", _leaf)
    seen = [{}, {}, {}]
    with torch.no_grad():
        x_fake = _generate(torch.from_numpy(z), gen, config, seen=seen[0])  # (B, 1, 28, 28): G's samples are inputs here
    real_logits = _discriminate(torch.from_numpy(x_real), disc, config, seen=seen[1])  # (B,)
    fake_logits = _discriminate(x_fake, disc, config, seen=seen[2])  # (B,)
    loss = _discriminator_loss(real_logits, fake_logits)
    # the same weights judged both batches: autograd adds their gradients
    grads = torch.autograd.grad(loss, list(disc.values()))
    for s in seen:
        stats = _update(stats, s, config.momentum)
    return float(loss.detach()), {name: g.numpy() for name, g in zip(disc, grads)}, stats


def generator_step(z, params, stats, config, kind="non_saturating"):
    """(loss, grads of every "gen.*" parameter, new stats): back through D, held fixed, into G."""
    if kind not in GENERATOR_LOSSES:
        raise ValueError(f"kind must be one of {GENERATOR_LOSSES}, got {kind!r}")
    z = _check_input("z", z, (None, config.z_dim))
    gen = _net(params, "gen", _leaf)
    disc = _net(params, "disc", torch.from_numpy)
    seen = [{}, {}]
    fake_logits = _discriminate(_generate(torch.from_numpy(z), gen, config, seen=seen[0]), disc, config, seen=seen[1])
    loss = _generator_loss(fake_logits, kind)
    grads = torch.autograd.grad(loss, list(gen.values()))  # D's own gradients are never asked for
    for s in seen:
        stats = _update(stats, s, config.momentum)
    return float(loss.detach()), {name: g.numpy() for name, g in zip(gen, grads)}, stats


# ----------------------------------------------------------------------------------------------
# The seed's §5.1 with convolutions: the generator and the discriminator as torch.nn.Modules
# ----------------------------------------------------------------------------------------------


class Generator(nn.Module):
    """z (B, Z) → images (B, 1, 28, 28) in [−1, 1]. In train() batch norm uses the batch and moves its buffers."""

    def __init__(self, config=DCGANConfig()):
        super().__init__()
        self.config = config
        g = config.gen_width
        self.project = nn.Linear(config.z_dim, 2 * g * Q * Q, bias=False)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * g, momentum=config.momentum), nn.ReLU(),
            nn.ConvTranspose2d(2 * g, g, 4, stride=2, padding=1, bias=False),  # (B, g, 14, 14)
            nn.BatchNorm2d(g, momentum=config.momentum), nn.ReLU(),
            nn.ConvTranspose2d(g, 1, 4, stride=2, padding=1), nn.Tanh(),  # (B, 1, 28, 28)
        )

    def forward(self, z):
        return self.net(self.project(z).view(len(z), 2 * self.config.gen_width, Q, Q))  # (B, 1, 28, 28)


class Discriminator(nn.Module):
    """images (B, 1, 28, 28) → logits (B,)."""

    def __init__(self, config=DCGANConfig()):
        super().__init__()
        self.config = config
        d = config.disc_width
        self.net = nn.Sequential(
            nn.Conv2d(1, d, 4, stride=2, padding=1), nn.LeakyReLU(config.slope),  # (B, d, 14, 14)
            nn.Conv2d(d, 2 * d, 4, stride=2, padding=1, bias=False),  # (B, 2d, 7, 7)
            nn.BatchNorm2d(2 * d, momentum=config.momentum), nn.LeakyReLU(config.slope),
            nn.Flatten(), nn.Linear(2 * d * Q * Q, 1),
        )

    def forward(self, x):
        return self.net(x)[:, 0]  # (B,)


def _layers(generator, discriminator):
    """scratch name → (torch tensor, stored transposed?) for every parameter and running statistic."""
    gn, dn = generator.net, discriminator.net
    named = {"gen.W1": (generator.project.weight, True)}
    for bn, layer in (("gen.bn1", gn[0]), ("gen.bn2", gn[3]), ("disc.bn2", dn[3])):
        named.update({f"{bn}.gamma": (layer.weight, False), f"{bn}.beta": (layer.bias, False),
                      f"{bn}.running_mean": (layer.running_mean, False), f"{bn}.running_var": (layer.running_var, False)})
    named.update({"gen.W2": (gn[2].weight, False), "gen.W3": (gn[5].weight, False), "gen.b3": (gn[5].bias, False),
                  "disc.W1": (dn[0].weight, False), "disc.b1": (dn[0].bias, False), "disc.W2": (dn[2].weight, False),
                  "disc.W3": (dn[6].weight, True), "disc.b3": (dn[6].bias, False)})
    return named


def parameter_map(generator, discriminator):
    """scratch parameter name → (torch parameter, stored transposed?), in scratch's order: for optimizer state."""
    named = _layers(generator, discriminator)
    return {name: named[name] for name in parameter_shapes(generator.config)}


def to_torch_dcgan(params, config, stats=None):
    """(Generator, Discriminator) in train() holding a scratch parameter dict (copied; nn.Linear's weights
    transposed) and, if given, the running statistics of scratch's `init_stats` layout."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have the keys {sorted(expected)}, got {sorted(params)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got shape {np.shape(params[name])}")
    dtype = torch.from_numpy(np.asarray(params["gen.W1"])).dtype
    generator, discriminator = Generator(config).to(dtype), Discriminator(config).to(dtype)
    arrays = {**params, **(stats if stats is not None else {})}
    with torch.no_grad():
        for name, (tensor, transposed) in _layers(generator, discriminator).items():
            if name in arrays:
                value = torch.from_numpy(np.asarray(arrays[name]))
                tensor.copy_(value.T if transposed else value)
    return generator, discriminator


def from_torch_dcgan(generator, discriminator):
    """(params, stats) in the scratch layout from a (Generator, Discriminator) pair: the inverse of to_torch_dcgan."""
    arrays = {name: (t.detach().T if transposed else t.detach()).contiguous().numpy().copy()
              for name, (t, transposed) in _layers(generator, discriminator).items()}
    params = {name: arrays[name] for name in parameter_shapes(generator.config)}
    stats = {name: arrays[name] for name in init_stats(generator.config)}
    return params, stats


# ----------------------------------------------------------------------------------------------
# The plain training loop (what ports/torch/train_conv.py's trainer does, minus checkpoints and schedules)
# ----------------------------------------------------------------------------------------------


def train_dcgan_loop(generator, discriminator, images, steps, batch_size=64, lr=2e-4, betas=(0.5, 0.999),
                     seed=0, kind="non_saturating"):
    """Train in place on `images` (N, 1, 28, 28), pixels in [0, 1]; return the losses [(D, G), …], one pair a step.

    Each step: one Adam update of D on a real batch and a fake one, then one of G through D.
    Noise and batches from torch.Generator(seed). The tested path, with scratch's batches and
    noise and checkpoints, is ports/torch/train_conv.py's TorchDCGANTrainer; this is the loop to read.
    """
    rng = torch.Generator().manual_seed(seed)
    real = torch.as_tensor(np.asarray(images)) * 2.0 - 1.0  # D sees tanh's range [−1, 1]
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    g_opt = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    generator.train(), discriminator.train()
    losses = []
    for _ in range(steps):
        x_real = real[torch.randint(len(real), (batch_size,), generator=rng)]  # (B, 1, 28, 28)
        z = torch.randn(batch_size, generator.config.z_dim, generator=rng, dtype=real.dtype)  # (B, Z)
        with torch.no_grad():
            x_fake = generator(z)  # G's samples are inputs to D's update
        d_loss = _discriminator_loss(discriminator(x_real), discriminator(x_fake))
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        z = torch.randn(batch_size, generator.config.z_dim, generator=rng, dtype=real.dtype)
        g_loss = _generator_loss(discriminator(generator(z)), kind)
        g_opt.zero_grad()
        g_loss.backward()  # also fills D's .grad, which D's next zero_grad clears
        g_opt.step()
        losses.append((float(d_loss), float(g_loss)))
    return losses


def digit_grid(generator, z, cols=8):
    """Generated digits of noise z (N, Z), G in eval(), tiled cols to a row: one image in [0, 1], 1-pixel gaps."""
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        images = to_pixels(generator(torch.as_tensor(np.asarray(z))))[:, 0].numpy()  # (N, 28, 28)
    generator.train(was_training)
    rows = -(-len(images) // cols)
    canvas = np.ones((rows * (SIDE + 1) - 1, cols * (SIDE + 1) - 1), dtype=images.dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (SIDE + 1):r * (SIDE + 1) + SIDE, c * (SIDE + 1):c * (SIDE + 1) + SIDE] = image
    return canvas
