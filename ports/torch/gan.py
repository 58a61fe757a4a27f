"""The GAN in PyTorch: scratch/gan.py with torch ops, the backward by autograd.

Read it beside scratch/gan.py: the names, the arguments and the NumPy-in/NumPy-out interface
of every function are the same; each forward records the graph and each backward replays it
with `torch.autograd.grad`. After the functions come the two networks as `torch.nn.Module`s
(`Generator`, `Discriminator`, the seed's §5.1), with `to_torch_gan` / `from_torch_gan` to move
weights between the scratch layout (W of shape (in, out)) and torch's (weight of shape (out, in)).

Shape letters as in scratch: B batch, D data width, Z noise width, H hidden width, m pack.
"""

import torch
from torch import nn

from ports.torch.attention import Cache, _gradients, _leaf
from ports.torch.vae import _softplus
from scratch.gan import (GENERATOR_LOSSES, GANConfig, _check_logits, check_densities, check_gan_config,
                         check_noise, check_samples, init_gan, parameter_shapes)
from scratch.validate import as_float_array, check_same_dtype

__all__ = [
    "discriminator_loss_forward", "discriminator_loss_backward", "generator_loss_forward",
    "generator_loss_backward", "value_function", "optimal_discriminator", "GANConfig", "parameter_shapes",
    "init_gan", "generator_forward", "generator_backward", "discriminator_forward", "discriminator_backward",
    "discriminator_step", "generator_step", "Generator", "Discriminator", "to_torch_gan", "from_torch_gan",
]


# ----------------------------------------------------------------------------------------------
# The losses on tensors, from logits: log D = −softplus(−l), log(1 − D) = −softplus(l)
# ----------------------------------------------------------------------------------------------


def _discriminator_loss(real_logits, fake_logits):
    # −V(D, G) = −E[log D(x)] − E[log(1 − D(G(z)))] = mean softplus(−l_real) + mean softplus(l_fake)
    return torch.mean(_softplus(-real_logits)) + torch.mean(_softplus(fake_logits))


def _generator_loss(fake_logits, kind):
    if kind == "minimax":
        return -torch.mean(_softplus(fake_logits))  # E[log(1 − D(G(z)))]
    return torch.mean(_softplus(-fake_logits))  # −E[log D(G(z))]


def discriminator_loss_forward(real_logits, fake_logits):
    """−mean log D(x) − mean log(1 − D(G(z))), minimised; logits of any shape."""
    real_logits, fake_logits = _check_logits("real_logits", real_logits), _check_logits("fake_logits", fake_logits)
    check_same_dtype(real_logits=real_logits, fake_logits=fake_logits)
    inputs = (_leaf(real_logits), _leaf(fake_logits))
    loss = _discriminator_loss(*inputs)
    return float(loss.detach()), Cache(inputs, loss)


def discriminator_loss_backward(dloss, cache):
    """Return (d_real_logits, d_fake_logits)."""
    d_real, d_fake = _gradients(dloss, cache)
    return d_real, d_fake


def generator_loss_forward(fake_logits, kind):
    """kind "minimax": mean log(1 − D(G(z))); kind "non_saturating": −mean log D(G(z))."""
    fake_logits = _check_logits("fake_logits", fake_logits)
    if kind not in GENERATOR_LOSSES:
        raise ValueError(f"kind must be one of {GENERATOR_LOSSES}, got {kind!r}")
    inputs = (_leaf(fake_logits),)
    loss = _generator_loss(inputs[0], kind)
    return float(loss.detach()), Cache(inputs, loss)


def generator_loss_backward(dloss, cache):
    """Return d_fake_logits."""
    (d_fake,) = _gradients(dloss, cache)
    return d_fake


def value_function(real_logits, fake_logits):
    """V(D, G) of Eq. 1 on samples: mean log D(x) + mean log(1 − D(G(z)))."""
    return -discriminator_loss_forward(real_logits, fake_logits)[0]


def optimal_discriminator(p_data, p_g):
    """D*(x) = p_data(x) / (p_data(x) + p_g(x)); 1/2 where both densities are 0."""
    p_data, p_g = check_densities(p_data, p_g)
    p_data, p_g = torch.from_numpy(p_data), torch.from_numpy(p_g)
    total = p_data + p_g
    return torch.where(total > 0, p_data / torch.where(total > 0, total, 1.0), 0.5).numpy()


# ----------------------------------------------------------------------------------------------
# The networks as functions of a scratch-layout parameter dict (for the checks against scratch)
# ----------------------------------------------------------------------------------------------


def _mlp(x, weights, hidden_activation, output_activation):
    """weights: [(W (in, out), b (out,)), …]; x @ W + b, activation between layers."""
    for i, (W, b) in enumerate(weights, start=1):
        x = x @ W + b  # (B, width_i)
        activation = hidden_activation if i < len(weights) else output_activation
        if activation is not None:
            x = activation(x)
    return x


def _net_weights(params, net):
    count = sum(name.startswith(f"{net}.W") for name in params)
    return [(params[f"{net}.W{i}"], params[f"{net}.b{i}"]) for i in range(1, count + 1)]


def _generate(z, params, config):
    output = torch.sigmoid if config.gen_output == "sigmoid" else None
    return _mlp(z, _net_weights(params, "gen"), torch.relu, output)  # (B, D)


def _discriminate(x, params, config):
    packed = x.reshape(x.shape[0] // config.pack, config.pack * config.x_dim)  # (B/m, m·D)
    logits = _mlp(packed, _net_weights(params, "disc"), lambda t: torch.where(t > 0, t, config.slope * t), None)
    return logits[:, 0]  # (B/m,)


def _leaves(params, net):
    return {name: _leaf(value) for name, value in params.items() if name.startswith(f"{net}.")}


def _named_gradients(dout, cache, names):
    grads = _gradients(dout, cache)
    return grads[0], dict(zip(names, grads[1:]))


def generator_forward(z, params, config):
    """G(z): z (B, Z) → samples (B, D)."""
    z = check_noise(z, config)
    leaves = _leaves(params, "gen")
    inputs = (_leaf(z), *leaves.values())
    x = _generate(inputs[0], leaves, config)
    return x.detach().numpy(), (Cache(inputs, x), list(leaves))


def generator_backward(dx, cache):
    """Return (dz, grads of every "gen.*" parameter)."""
    return _named_gradients(dx, *cache)


def discriminator_forward(x, params, config):
    """Logits: x (B, D) → (B / m,), one per pack of m samples."""
    x = check_samples(x, config)
    leaves = _leaves(params, "disc")
    inputs = (_leaf(x), *leaves.values())
    logits = _discriminate(inputs[0], leaves, config)
    return logits.detach().numpy(), (Cache(inputs, logits), list(leaves))


def discriminator_backward(dlogits, cache):
    """Return (dx, grads of every "disc.*" parameter)."""
    return _named_gradients(dlogits, *cache)


def discriminator_step(x_real, z, params, config):
    """Loss and gradients of every "disc.*" parameter; G's samples are detached inputs."""
    disc = _leaves(params, "disc")
    with torch.no_grad():
        x_fake = _generate(torch.from_numpy(as_float_array("z", z)), _leaves(params, "gen"), config)
    real = _discriminate(torch.from_numpy(as_float_array("x_real", x_real)), disc, config)
    loss = _discriminator_loss(real, _discriminate(x_fake, disc, config))
    grads = torch.autograd.grad(loss, list(disc.values()))
    return float(loss.detach()), {name: g.numpy() for name, g in zip(disc, grads)}


def generator_step(z, params, config, kind="non_saturating"):
    """Loss and gradients of every "gen.*" parameter, back through D (held fixed) into G."""
    gen = _leaves(params, "gen")
    disc = {name: torch.from_numpy(value) for name, value in params.items() if name.startswith("disc.")}
    loss = _generator_loss(_discriminate(_generate(torch.from_numpy(as_float_array("z", z)), gen, config), disc, config), kind)
    grads = torch.autograd.grad(loss, list(gen.values()))
    return float(loss.detach()), {name: g.numpy() for name, g in zip(gen, grads)}


# ----------------------------------------------------------------------------------------------
# The seed's §5.1: the generator and the discriminator as torch.nn.Modules
# ----------------------------------------------------------------------------------------------


def _linear_stack(widths, hidden, output):
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        layers.append(nn.Linear(fan_in, fan_out))
        last = i == len(widths) - 1
        if not last:
            layers.append(hidden())
        elif output is not None:
            layers.append(output())
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """z (B, Z) → samples (B, D): Linear + ReLU layers, then a linear (2-D points) or sigmoid (pixels) output."""

    def __init__(self, config):
        super().__init__()
        self.config = check_gan_config(config)
        widths = (config.z_dim, *config.gen_hidden, config.x_dim)
        self.net = _linear_stack(widths, nn.ReLU, nn.Sigmoid if config.gen_output == "sigmoid" else None)

    def forward(self, z):
        return self.net(z)  # (B, D)


class Discriminator(nn.Module):
    """x (B, D) → logits (B / m,): m samples packed into one input, Linear + LeakyReLU layers."""

    def __init__(self, config):
        super().__init__()
        self.config = check_gan_config(config)
        widths = (config.pack * config.x_dim, *config.disc_hidden, 1)
        self.net = _linear_stack(widths, lambda: nn.LeakyReLU(config.slope), None)

    def forward(self, x):
        packed = x.reshape(x.shape[0] // self.config.pack, self.config.pack * self.config.x_dim)  # (B/m, m·D)
        return self.net(packed)[:, 0]  # (B/m,)


def _linears(module):
    return [layer for layer in module.net if isinstance(layer, nn.Linear)]


def to_torch_gan(params, config):
    """(Generator, Discriminator) holding a scratch parameter dict's weights (copied, transposed)."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have keys {sorted(expected)}, got {sorted(params)}")
    dtype = torch.from_numpy(params["gen.W1"]).dtype
    generator, discriminator = Generator(config).to(dtype), Discriminator(config).to(dtype)
    with torch.no_grad():
        for net, module in (("gen", generator), ("disc", discriminator)):
            for i, layer in enumerate(_linears(module), start=1):
                layer.weight.copy_(torch.from_numpy(params[f"{net}.W{i}"]).T)  # torch keeps (out, in)
                layer.bias.copy_(torch.from_numpy(params[f"{net}.b{i}"]))
    return generator, discriminator


def from_torch_gan(generator, discriminator):
    """The scratch parameter dict of a (Generator, Discriminator) pair."""
    params = {}
    for net, module in (("gen", generator), ("disc", discriminator)):
        for i, layer in enumerate(_linears(module), start=1):
            params[f"{net}.W{i}"] = layer.weight.detach().T.contiguous().numpy().copy()  # (in, out)
            params[f"{net}.b{i}"] = layer.bias.detach().numpy().copy()
    return params
