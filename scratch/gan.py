"""The generative adversarial network (Goodfellow et al., 2014) in NumPy, every gradient by hand.

Shape letters, used in the comment at the end of each array line:
    B  batch      D  data width (2 for the ring and the grid, 64 for the 8×8 digits)
    Z  noise width      H  hidden width      m  samples packed into one discriminator input

A generator G maps noise z ~ N(0, I) to samples; a discriminator D maps a sample to the
probability that it is real, D(x) = σ(l(x)) with l the logit. They play the minimax game

    min_G max_D V(D, G) = E_{x~p_data}[log D(x)] + E_{z~p_z}[log(1 − D(G(z)))]      (Eq. 1)

For a fixed G the best discriminator is D*(x) = p_data(x) / (p_data(x) + p_g(x)) (Prop. 1), and
there V(D*, G) = −log 4 + 2·JSD(p_data ‖ p_g), smallest exactly when p_g = p_data (Thm. 1).
As everywhere in this project losses are minimised and averaged over the batch, so the
discriminator minimises −V. Every log D is computed from the logit, never from σ(l):

    log D = log σ(l) = −softplus(−l)          log(1 − D) = log σ(−l) = −softplus(l)

which stays finite for any logit, where log(σ(l)) is log(0) = −inf once σ(l) rounds to 0.
"""

import math
from typing import NamedTuple

import numpy as np

from scratch.layers import (leaky_relu_backward, leaky_relu_forward, linear_backward, linear_forward,
                            relu_backward, relu_forward, sigmoid, sigmoid_backward, sigmoid_forward,
                            softplus)
from scratch.validate import as_float_array, check_same_dtype

GENERATOR_LOSSES = ("minimax", "non_saturating")


def _check_logits(name, logits):
    logits = as_float_array(name, logits)
    if logits.size == 0:
        raise ValueError(f"{name} must hold at least one logit, got shape {logits.shape}")
    return logits


# ----------------------------------------------------------------------------------------------
# The losses, from logits
# ----------------------------------------------------------------------------------------------


class DiscriminatorLossCache(NamedTuple):
    real_logits: np.ndarray
    fake_logits: np.ndarray


def discriminator_loss_forward(real_logits, fake_logits):
    """−mean log D(x) − mean log(1 − D(G(z))), the discriminator's side of Eq. 1, minimised.

    real_logits: the discriminator's logits on real data, any shape (one per example);
    fake_logits: its logits on generated samples, any shape. Each mean is over its own entries.
    """
    real_logits, fake_logits = _check_logits("real_logits", real_logits), _check_logits("fake_logits", fake_logits)
    check_same_dtype(real_logits=real_logits, fake_logits=fake_logits)
    # BEGIN SOLUTION
    # HINT: −log D = softplus(−l) and −log(1 − D) = softplus(l); never take the log of σ(l).
    # −V(D, G) = −E[log D(x)] − E[log(1 − D(G(z)))] = mean softplus(−l_real) + mean softplus(l_fake)
    loss = np.mean(softplus(-real_logits)) + np.mean(softplus(fake_logits))  # ()
    # END SOLUTION
    return float(loss), DiscriminatorLossCache(real_logits, fake_logits)


def discriminator_loss_backward(dloss, cache):
    """Return (d_real_logits, d_fake_logits)."""
    real_logits, fake_logits = cache
    # BEGIN SOLUTION
    # d softplus(t)/dt = σ(t);  each mean divides by its own count
    # ∂/∂l_real softplus(−l_real) = −σ(−l_real) = −(1 − D(x))
    d_real = (-dloss / real_logits.size) * sigmoid(-real_logits)  # (B_real)
    # ∂/∂l_fake softplus(l_fake) = σ(l_fake) = D(G(z))
    d_fake = (dloss / fake_logits.size) * sigmoid(fake_logits)  # (B_fake)
    # END SOLUTION
    return d_real.astype(real_logits.dtype, copy=False), d_fake.astype(fake_logits.dtype, copy=False)


class GeneratorLossCache(NamedTuple):
    fake_logits: np.ndarray
    kind: str


def generator_loss_forward(fake_logits, kind):
    """The generator's loss on the discriminator's logits for its samples, minimised.

    kind "minimax":        mean log(1 − D(G(z)))   the generator's side of Eq. 1 as written
    kind "non_saturating": −mean log D(G(z))       what Goodfellow et al. train in practice (§3):
        early on D rejects every sample, D(G(z)) ≈ 0, and log(1 − D) is flat there while −log D
        is steep, so the non-saturating loss still teaches G what to change.
    """
    fake_logits = _check_logits("fake_logits", fake_logits)
    if kind not in GENERATOR_LOSSES:
        raise ValueError(f"kind must be one of {GENERATOR_LOSSES}, got {kind!r}")
    # BEGIN SOLUTION
    # HINT: log(1 − D) = −softplus(l) and −log D = softplus(−l).
    if kind == "minimax":
        loss = -np.mean(softplus(fake_logits))  # (), E[log(1 − D(G(z)))]
    else:
        loss = np.mean(softplus(-fake_logits))  # (), −E[log D(G(z))]
    # END SOLUTION
    return float(loss), GeneratorLossCache(fake_logits, kind)


def generator_loss_backward(dloss, cache):
    """Return d_fake_logits."""
    fake_logits, kind = cache
    scale = dloss / fake_logits.size
    # BEGIN SOLUTION
    if kind == "minimax":
        # ∂/∂l [−softplus(l)] = −σ(l) = −D: vanishes as D(G(z)) → 0, where G most needs a signal
        d_fake = -scale * sigmoid(fake_logits)  # (B)
    else:
        # ∂/∂l softplus(−l) = −σ(−l) = −(1 − D): close to −1 as D(G(z)) → 0
        d_fake = -scale * sigmoid(-fake_logits)  # (B)
    # END SOLUTION
    return d_fake.astype(fake_logits.dtype, copy=False)


def value_function(real_logits, fake_logits):
    """V(D, G) of Eq. 1 on samples: mean log D(x) + mean log(1 − D(G(z))) = −discriminator loss."""
    return -discriminator_loss_forward(real_logits, fake_logits)[0]


def check_densities(p_data, p_g):
    """Two float arrays of one shape and dtype, every value ≥ 0 (densities at the same points)."""
    p_data, p_g = as_float_array("p_data", p_data), as_float_array("p_g", p_g)
    if p_data.shape != p_g.shape:
        raise ValueError(f"p_g must have the shape of p_data {p_data.shape}, got shape {p_g.shape}")
    if np.any(p_data < 0) or np.any(p_g < 0):
        raise ValueError("p_data and p_g are densities: every value must be ≥ 0")
    check_same_dtype(p_data=p_data, p_g=p_g)
    return p_data, p_g


def optimal_discriminator(p_data, p_g):
    """D*(x) = p_data(x) / (p_data(x) + p_g(x)) (Prop. 1), for densities evaluated at the same x.

    Where both densities are 0 the formula is 0/0 and D* does not matter (no sample lands
    there); this returns 1/2 there, the value of an undecided discriminator.
    """
    p_data, p_g = check_densities(p_data, p_g)
    # BEGIN SOLUTION
    # HINT: maximise p_data log D + p_g log(1 − D) pointwise in D.
    # d/dD [p_data log D + p_g log(1 − D)] = p_data / D − p_g / (1 − D) = 0  ⇒  D* = p_data / (p_data + p_g)
    total = p_data + p_g  # (...)
    safe = np.where(total > 0, total, 1.0)  # (...), no 0/0
    return np.where(total > 0, p_data / safe, 0.5).astype(p_data.dtype, copy=False)  # (...)
    # END SOLUTION


# ----------------------------------------------------------------------------------------------
# The networks: multilayer perceptrons
# ----------------------------------------------------------------------------------------------


class GANConfig(NamedTuple):
    x_dim: int = 2  # D
    z_dim: int = 2  # Z
    gen_hidden: tuple = (128, 128, 128)  # widths of G's ReLU layers
    disc_hidden: tuple = (128, 128)  # widths of D's leaky-ReLU layers
    pack: int = 1  # m: D judges m samples at once (PacGAN, Lin et al. 2018); 1 = the plain GAN
    gen_output: str = "linear"  # "linear" (2-D points) or "sigmoid" (pixels in [0, 1])
    slope: float = 0.2  # the discriminator's leaky-ReLU slope for negative inputs


def check_gan_config(config):
    if not isinstance(config, GANConfig):
        raise TypeError(f"config must be a GANConfig, got {type(config).__name__}")
    for name in ("x_dim", "z_dim", "pack"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"config.{name} must be a positive int, got {value!r}")
    for name in ("gen_hidden", "disc_hidden"):
        widths = getattr(config, name)
        if not isinstance(widths, tuple) or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(f"config.{name} must be a tuple of positive ints, got {widths!r}")
    if config.gen_output not in ("linear", "sigmoid"):
        raise ValueError(f"config.gen_output must be 'linear' or 'sigmoid', got {config.gen_output!r}")
    return config


def check_noise(z, config):
    """G's input: a float array of shape (B, Z)."""
    z = as_float_array("z", z)
    if z.ndim != 2 or z.shape[1] != config.z_dim:
        raise ValueError(f"z must have shape (B, {config.z_dim}), got shape {z.shape}")
    return z


def check_samples(x, config):
    """D's input: a float array of shape (B, D), B a multiple of the pack."""
    x = as_float_array("x", x)
    if x.ndim != 2 or x.shape[1] != config.x_dim or len(x) % config.pack:
        raise ValueError(f"x must have shape (B, {config.x_dim}) with B a multiple of pack={config.pack}, got shape {x.shape}")
    return x


def _widths(config, net):
    if net == "gen":
        return (config.z_dim, *config.gen_hidden, config.x_dim)
    return (config.pack * config.x_dim, *config.disc_hidden, 1)


def parameter_shapes(config):
    """{"gen.W1": (Z, H1), "gen.b1": (H1,), …, "disc.W1": (m·D, H1), …, "disc.bL": (1,)}."""
    check_gan_config(config)
    shapes = {}
    for net in ("gen", "disc"):
        widths = _widths(config, net)
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            shapes[f"{net}.W{i}"], shapes[f"{net}.b{i}"] = (fan_in, fan_out), (fan_out,)
    return shapes


def init_gan(config, rng, dtype=np.float64):
    """Kaiming-uniform weights for the (leaky) ReLU layers (He et al. 2015), zero biases."""
    params = {}
    for name, shape in parameter_shapes(config).items():
        if len(shape) == 2:
            limit = math.sqrt(6.0 / shape[0])  # Var = 2 / fan_in keeps a ReLU layer's output scale
            params[name] = rng.uniform(-limit, limit, size=shape).astype(dtype)
        else:
            params[name] = np.zeros(shape, dtype=dtype)
    return params


def _mlp_forward(x, params, net, layers, hidden_forward, output_forward):
    """Layers 1 … L of `net`: linear_forward, then the hidden activation (the output one after layer L)."""
    caches = []
    # BEGIN SOLUTION
    # HINT: for i = 1 … layers apply linear_forward with params[f"{net}.W{i}"], then the activation; keep both caches.
    for i in range(1, layers + 1):
        x, linear_cache = linear_forward(x, params[f"{net}.W{i}"], params[f"{net}.b{i}"])  # (B, width_i)
        activation = hidden_forward if i < layers else output_forward
        activation_cache = None
        if activation is not None:
            x, activation_cache = activation(x)
        caches.append((linear_cache, activation_cache))
    # END SOLUTION
    return x, caches


def _mlp_backward(dout, caches, net, hidden_backward, output_backward):
    """Back through _mlp_forward's layers, last to first; returns (d input, grads keyed like params)."""
    grads = {}
    layers = len(caches)
    # BEGIN SOLUTION
    # HINT: walk the layers from L down to 1: the activation's backward first, then linear_backward.
    # chain rule, layer by layer: dout ← activation'(pre) ⊙ dout, then (dout, dW_i, db_i) ← linear_backward
    for i in range(layers, 0, -1):
        linear_cache, activation_cache = caches[i - 1]
        activation = hidden_backward if i < layers else output_backward
        if activation is not None:
            dout = activation(dout, activation_cache)
        dout, grads[f"{net}.W{i}"], grads[f"{net}.b{i}"] = linear_backward(dout, linear_cache)
    # END SOLUTION
    return dout, {name: grads[name] for i in range(1, layers + 1) for name in (f"{net}.W{i}", f"{net}.b{i}")}


def generator_forward(z, params, config):
    """G(z): ReLU layers, then a linear or sigmoid output. z (B, Z) → samples (B, D)."""
    z = check_noise(z, config)
    # BEGIN SOLUTION
    # HINT: _mlp_forward with ReLU between layers, and sigmoid_forward after the last one for pixels.
    output = sigmoid_forward if config.gen_output == "sigmoid" else None
    x, caches = _mlp_forward(z, params, "gen", len(config.gen_hidden) + 1, relu_forward, output)  # (B, D)
    # END SOLUTION
    return x, (caches, config)


def generator_backward(dx, cache):
    """Return (dz, grads of every "gen.*" parameter)."""
    caches, config = cache
    # BEGIN SOLUTION
    output = sigmoid_backward if config.gen_output == "sigmoid" else None
    dz, grads = _mlp_backward(dx, caches, "gen", relu_backward, output)  # (B, Z) and every "gen.*"
    # END SOLUTION
    return dz, grads


def discriminator_forward(x, params, config):
    """Logits l(x) of D(x) = σ(l): x (B, D) → (B / m,), one logit per pack of m samples.

    Packing (PacGAN): rows m·j … m·j + m − 1 are concatenated into one input of width m·D, so D
    judges m samples jointly and can see that a generator puts them all on one mode.
    """
    x = check_samples(x, config)
    # BEGIN SOLUTION
    # HINT: consecutive rows become one row: reshape (B, D) to (B / m, m·D).
    packed = x.reshape(len(x) // config.pack, config.pack * config.x_dim)  # (B/m, m·D)
    # END SOLUTION
    slope = config.slope
    logits, caches = _mlp_forward(packed, params, "disc", len(config.disc_hidden) + 1,
                                  lambda t: leaky_relu_forward(t, slope), None)  # (B/m, 1)
    return logits[:, 0], (caches, x.shape)


def discriminator_backward(dlogits, cache):
    """Return (dx, grads of every "disc.*" parameter)."""
    caches, x_shape = cache
    dpacked, grads = _mlp_backward(dlogits[:, None], caches, "disc", leaky_relu_backward, None)  # (B/m, m·D)
    # BEGIN SOLUTION
    # a reshape moves no numbers  ⇒  its backward is the inverse reshape
    dx = dpacked.reshape(x_shape)  # (B, D)
    # END SOLUTION
    return dx, grads


# ----------------------------------------------------------------------------------------------
# One training step of each player (Algorithm 1, Goodfellow et al. 2014)
# ----------------------------------------------------------------------------------------------


def discriminator_step(x_real, z, params, config):
    """Loss and gradients of every "disc.*" parameter on one real batch and one noise batch.

    G's samples are inputs here, not something to improve: no gradient flows into "gen.*".
    """
    check_same_dtype(x_real=as_float_array("x_real", x_real), z=as_float_array("z", z))
    # BEGIN SOLUTION
    # HINT: D judges a real batch and G(z); its loss's two gradients flow back through D twice, and add.
    x_fake, _ = generator_forward(z, params, config)  # (B, D)
    real_logits, real_cache = discriminator_forward(x_real, params, config)  # (B/m,)
    fake_logits, fake_cache = discriminator_forward(x_fake, params, config)  # (B/m,)
    loss, loss_cache = discriminator_loss_forward(real_logits, fake_logits)
    d_real, d_fake = discriminator_loss_backward(1.0, loss_cache)
    _, grads = discriminator_backward(d_real, real_cache)
    _, fake_grads = discriminator_backward(d_fake, fake_cache)
    # the same weights judged both batches  ⇒  their gradients add
    grads = {name: grads[name] + fake_grads[name] for name in grads}
    # END SOLUTION
    return loss, grads


def generator_step(z, params, config, kind="non_saturating"):
    """Loss and gradients of every "gen.*" parameter: back through D (held fixed) into G."""
    # BEGIN SOLUTION
    # HINT: loss → D's logits → D's input (dx, not D's own gradients) → G's parameters.
    x_fake, gen_cache = generator_forward(z, params, config)  # (B, D)
    fake_logits, disc_cache = discriminator_forward(x_fake, params, config)  # (B/m,)
    loss, loss_cache = generator_loss_forward(fake_logits, kind)
    d_fake = generator_loss_backward(1.0, loss_cache)  # (B/m,)
    dx_fake, _ = discriminator_backward(d_fake, disc_cache)  # (B, D); D's own gradients are dropped
    _, grads = generator_backward(dx_fake, gen_cache)
    # END SOLUTION
    return loss, grads
