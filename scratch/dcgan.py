"""The deep convolutional GAN (Radford, Metz and Chintala, 2016) for 28×28 digits, every gradient by hand.

Shape letters, used in the comment at the end of each array line:
    B  batch      Z  noise width      g  the generator's width      d  the discriminator's width

The game and its losses are scratch/gan.py's; what changes is the two networks. Both are the
paper's "architecture guidelines for stable deep convolutional GANs" (§3), shrunk to MNIST:

    G:  z (B, Z) → linear → (B, 2g, 7, 7) → BN, ReLU → 4×4 transposed conv, stride 2 → (B, g, 14, 14)
           → BN, ReLU → 4×4 transposed conv, stride 2 → (B, 1, 28, 28) → tanh
    D:  x (B, 1, 28, 28) → 4×4 conv, stride 2 → (B, d, 14, 14) → leaky ReLU(0.2)
           → 4×4 conv, stride 2 → (B, 2d, 7, 7) → BN, leaky ReLU(0.2) → flatten → linear → logit (B,)

and why each choice, in the paper's words or ours:
* strided (transposed) convolutions instead of pooling: each network learns its own up- and
  down-sampling (the "all convolutional net", Springenberg et al. 2014). 4×4 kernels, stride 2,
  padding 1 exactly halve or double the side: o = ⌊(i + 2 − 4) / 2⌋ + 1 = i/2 and o = 2(i − 1) − 2 + 4 = 2i.
* no fully connected hidden layers: G's first layer is a linear map reshaped to 7×7 maps, D's
  last flattens its maps into one logit; there is nothing else that is dense.
* batch norm in both networks, against poor initialisation and to let gradients reach deeper
  layers; but not on G's output nor on D's input, which made the samples oscillate and unstable.
  A layer followed by batch norm has no bias: batch norm's β takes its place.
* ReLU in G, tanh on its output ("a bounded activation allowed the model to learn more quickly
  to saturate and cover the color space"); leaky ReLU with slope 0.2 in D.
* weights drawn from N(0, 0.02²); Adam with lr 2e-4 (1e-3 was too high) and β1 = 0.5 (0.9 made
  training oscillate). Those live in the trainer (scratch/train_conv.py). On these 4,000 digits
  and 3,000 steps, twice the paper's rate scored better on every seed we ran (README, "Image
  generators"), so the command line trains at 4e-4.

Pixels. The data are in [0, 1]; G works in tanh's range [−1, 1], as in the paper, so the trainer
feeds D real images 2x − 1 and writes samples (G(z) + 1) / 2, which lie in [0, 1].

Batch norm's running statistics are state, not parameters: a dict `stats` of arrays
("gen.bn1.running_mean", …) that no gradient touches. Every training-mode forward uses the batch's
own statistics and, as torch.nn.BatchNorm2d in train(), moves the running ones (update_stats);
an evaluation-mode forward (stats given) uses the running statistics only, so a sample does not
depend on the others in its batch.
"""

from typing import NamedTuple

import numpy as np

from scratch.conv import conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward
from scratch.gan import (discriminator_loss_backward, discriminator_loss_forward, generator_loss_backward,
                         generator_loss_forward)
from scratch.layers import (batch_norm_backward, batch_norm_eval, batch_norm_forward, batch_norm_update_running,
                            leaky_relu_backward, leaky_relu_forward, linear_backward, linear_forward, relu_backward,
                            relu_forward, tanh_backward, tanh_forward)
from scratch.validate import as_float_array, check_flag, check_same_dtype

SIDE = 28  # the images are SIDE × SIDE; the maps in between are SIDE/2 and SIDE/4 = 7


class DCGANConfig(NamedTuple):
    z_dim: int = 64  # Z
    gen_width: int = 32  # g: G's channels at 14×14 (2g at 7×7)
    disc_width: int = 32  # d: D's channels at 14×14 (2d at 7×7)
    slope: float = 0.2  # D's leaky-ReLU slope
    momentum: float = 0.1  # batch norm's running-average rate (PyTorch's default)


BATCH_NORMS = ("gen.bn1", "gen.bn2", "disc.bn2")
GEN_NAMES = ("gen.W1", "gen.bn1.gamma", "gen.bn1.beta", "gen.W2", "gen.bn2.gamma", "gen.bn2.beta", "gen.W3", "gen.b3")
DISC_NAMES = ("disc.W1", "disc.b1", "disc.W2", "disc.bn2.gamma", "disc.bn2.beta", "disc.W3", "disc.b3")


def parameter_shapes(config):
    """{"gen.W1": (Z, 2g·49), "gen.bn1.gamma": (2g,), …, "disc.W3": (2d·49, 1), "disc.b3": (1,)}."""
    z, g, d, q = config.z_dim, config.gen_width, config.disc_width, SIDE // 4
    return {
        "gen.W1": (z, 2 * g * q * q), "gen.bn1.gamma": (2 * g,), "gen.bn1.beta": (2 * g,),
        "gen.W2": (2 * g, g, 4, 4), "gen.bn2.gamma": (g,), "gen.bn2.beta": (g,),  # transposed: (C_in, C_out, kh, kw)
        "gen.W3": (g, 1, 4, 4), "gen.b3": (1,),
        "disc.W1": (d, 1, 4, 4), "disc.b1": (d,),  # conv: (C_out, C_in, kh, kw)
        "disc.W2": (2 * d, d, 4, 4), "disc.bn2.gamma": (2 * d,), "disc.bn2.beta": (2 * d,),
        "disc.W3": (2 * d * q * q, 1), "disc.b3": (1,),
    }


def init_dcgan(config, rng, dtype=np.float64):
    """Weights from N(0, 0.02²) (the paper, §4), biases and β zero, batch norm's γ one."""
    params = {}
    for name, shape in parameter_shapes(config).items():
        if name.endswith("gamma"):
            params[name] = np.ones(shape, dtype=dtype)
        elif len(shape) == 1:
            params[name] = np.zeros(shape, dtype=dtype)
        else:
            params[name] = (0.02 * rng.standard_normal(shape)).astype(dtype)
    return params


def init_stats(config, dtype=np.float64):
    """Running mean 0 and running variance 1 for every batch norm, as PyTorch starts them."""
    shapes = parameter_shapes(config)
    stats = {}
    for bn in BATCH_NORMS:
        stats[f"{bn}.running_mean"] = np.zeros(shapes[f"{bn}.gamma"], dtype=dtype)
        stats[f"{bn}.running_var"] = np.ones(shapes[f"{bn}.gamma"], dtype=dtype)
    return stats


def _check_input(name, x, shape):
    x = as_float_array(name, x)
    if x.ndim != len(shape) or x.shape[1:] != shape[1:]:
        raise ValueError(f"{name} must have shape {shape}, got shape {x.shape}")
    return x


def _batch_norm(h, params, bn, stats):
    """Training mode (stats None): batch statistics, and the cache. Evaluation mode: the running ones, no cache."""
    gamma, beta = params[f"{bn}.gamma"], params[f"{bn}.beta"]
    if stats is None:
        return batch_norm_forward(h, gamma, beta)
    return batch_norm_eval(h, gamma, beta, stats[f"{bn}.running_mean"], stats[f"{bn}.running_var"]), None


def update_stats(stats, cache, momentum=0.1):
    """The running statistics after one training-mode forward: a new dict, `stats` left unchanged.

    r ← (1 − momentum) r + momentum · batch statistic, for each batch norm of the network whose
    cache this is (scratch/layers.py's batch_norm_update_running; the other network's entries are kept).
    """
    new = dict(stats)
    for bn, bn_cache in cache.batch_norms.items():
        new[f"{bn}.running_mean"], new[f"{bn}.running_var"] = batch_norm_update_running(
            stats[f"{bn}.running_mean"], stats[f"{bn}.running_var"], bn_cache, momentum)
    return new


class NetworkCache(NamedTuple):
    layers: dict  # layer name → that op's cache, for the backward
    batch_norms: dict  # "gen.bn1" → its batch-norm cache, for update_stats


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------


def generator_forward(z, params, config, stats=None):
    """G(z): noise z (B, Z) → images (B, 1, 28, 28) in [−1, 1].

    stats None: training mode (batch statistics; the cache feeds generator_backward and
    update_stats). stats given: evaluation mode with its running statistics; the cache is None.
    """
    z = _check_input("z", z, (None, config.z_dim))
    check_same_dtype(z=z, params=params["gen.W1"])
    c, q, training = 2 * config.gen_width, SIDE // 4, stats is None
    layers, norms = {}, {}
    # BEGIN SOLUTION
    # HINT: linear (zero bias) → reshape (B, 2g, 7, 7) → batch norm → ReLU → 4×4 transposed conv, stride 2, padding 1 →
    # HINT: batch norm → ReLU → 4×4 transposed conv, stride 2, padding 1 (with gen.b3) → tanh; each op's cache in
    # HINT: layers["W1"], ["relu1"], ["W2"], ["relu2"], ["W3"], ["tanh"], each batch norm's (the _batch_norm helper) in
    # HINT: norms["gen.bn1"], ["gen.bn2"].
    # a linear map of the noise, reshaped into 2g maps of 7×7: the "project and reshape" of the paper's Fig. 1
    h, layers["W1"] = linear_forward(z, params["gen.W1"], np.zeros(c * q * q, dtype=z.dtype))  # (B, 2g·49), no bias
    h = h.reshape(len(z), c, q, q)  # (B, 2g, 7, 7)
    h, norms["gen.bn1"] = _batch_norm(h, params, "gen.bn1", stats)  # (B, 2g, 7, 7)
    h, layers["relu1"] = relu_forward(h)  # (B, 2g, 7, 7)
    # 4×4 transposed convolution, stride 2, padding 1: o = 2(i − 1) − 2 + 4 = 2i
    h, layers["W2"] = conv_transpose2d_forward(h, params["gen.W2"], None, stride=2, padding=1)  # (B, g, 14, 14)
    h, norms["gen.bn2"] = _batch_norm(h, params, "gen.bn2", stats)  # (B, g, 14, 14)
    h, layers["relu2"] = relu_forward(h)  # (B, g, 14, 14)
    h, layers["W3"] = conv_transpose2d_forward(h, params["gen.W3"], params["gen.b3"], stride=2, padding=1)  # (B, 1, 28, 28)
    x, layers["tanh"] = tanh_forward(h)  # (B, 1, 28, 28), no batch norm on G's output
    # END SOLUTION
    if not training:
        return x, None
    layers.update({f"bn{i}": norms[f"gen.bn{i}"] for i in (1, 2)})
    return x, NetworkCache(layers, norms)


def generator_backward(dx, cache):
    """Return (dz, grads of every "gen.*" parameter) for a training-mode forward."""
    if cache is None:
        raise ValueError("generator_backward needs a training-mode forward's cache (stats=None); evaluation mode keeps none")
    layers, grads = cache.layers, {}
    # BEGIN SOLUTION
    # HINT: the forward in reverse, each op's backward on its cache in cache.layers ("tanh", "W3", "relu2", "bn2", "W2",
    # HINT: "relu1", "bn1", "W1"); grads keyed like the parameters ("gen.W3", "gen.bn2.gamma", …).
    # tanh' = 1 − tanh²
    dh = tanh_backward(dx, layers["tanh"])  # (B, 1, 28, 28)
    # the transpose of a transposed convolution is a convolution (scratch/conv.py)
    dh, grads["gen.W3"], grads["gen.b3"] = conv_transpose2d_backward(dh, layers["W3"])  # (B, g, 14, 14)
    dh = relu_backward(dh, layers["relu2"])  # (B, g, 14, 14)
    dh, grads["gen.bn2.gamma"], grads["gen.bn2.beta"] = batch_norm_backward(dh, layers["bn2"])  # (B, g, 14, 14)
    dh, grads["gen.W2"], _ = conv_transpose2d_backward(dh, layers["W2"])  # (B, 2g, 7, 7)
    dh = relu_backward(dh, layers["relu1"])  # (B, 2g, 7, 7)
    dh, grads["gen.bn1.gamma"], grads["gen.bn1.beta"] = batch_norm_backward(dh, layers["bn1"])  # (B, 2g, 7, 7)
    # a reshape moves no numbers: its backward is the inverse reshape
    dz, grads["gen.W1"], _ = linear_backward(dh.reshape(len(dh), -1), layers["W1"])  # (B, Z)
    # END SOLUTION
    return dz, {name: grads[name] for name in GEN_NAMES}


# ----------------------------------------------------------------------------------------------
# The discriminator
# ----------------------------------------------------------------------------------------------


def discriminator_forward(x, params, config, stats=None):
    """Logits l(x) of D(x) = σ(l): images x (B, 1, 28, 28) → (B,). stats: as generator_forward."""
    x = _check_input("x", x, (None, 1, SIDE, SIDE))
    check_same_dtype(x=x, params=params["disc.W1"])
    slope, training = config.slope, stats is None
    layers, norms = {}, {}
    # BEGIN SOLUTION
    # HINT: 4×4 conv, stride 2, padding 1 (with disc.b1) → leaky ReLU(slope) → 4×4 conv, stride 2, padding 1 (no bias) →
    # HINT: batch norm → leaky ReLU(slope) → flatten → linear; each op's cache in layers["W1"], ["lrelu1"], ["W2"],
    # HINT: ["lrelu2"], ["W3"], the batch norm's (the _batch_norm helper) in norms["disc.bn2"]; logits (B, 1).
    # no batch norm on D's input layer (§3)
    h, layers["W1"] = conv2d_forward(x, params["disc.W1"], params["disc.b1"], stride=2, padding=1)  # (B, d, 14, 14)
    h, layers["lrelu1"] = leaky_relu_forward(h, slope)  # (B, d, 14, 14)
    # o = ⌊(i + 2·1 − 4) / 2⌋ + 1 = i / 2
    h, layers["W2"] = conv2d_forward(h, params["disc.W2"], None, stride=2, padding=1)  # (B, 2d, 7, 7)
    h, norms["disc.bn2"] = _batch_norm(h, params, "disc.bn2", stats)  # (B, 2d, 7, 7)
    h, layers["lrelu2"] = leaky_relu_forward(h, slope)  # (B, 2d, 7, 7)
    logits, layers["W3"] = linear_forward(h.reshape(len(h), -1), params["disc.W3"], params["disc.b3"])  # (B, 1)
    # END SOLUTION
    if not training:
        return logits[:, 0], None
    layers["bn2"] = norms["disc.bn2"]
    return logits[:, 0], NetworkCache(layers, norms)


def discriminator_backward(dlogits, cache, needs_input_grad=True):
    """Return (dx, grads of every "disc.*" parameter) for a training-mode forward.

    needs_input_grad False: dx is None and its first-layer work is skipped (D's own step: the real
    images are data, the fake ones a constant there).
    """
    if cache is None:
        raise ValueError("discriminator_backward needs a training-mode forward's cache (stats=None)")
    needs_input_grad = check_flag("needs_input_grad", needs_input_grad)
    layers, grads = cache.layers, {}
    # BEGIN SOLUTION
    # HINT: the forward in reverse, each op's backward on its cache in cache.layers ("W3", "lrelu2", "bn2", "W2",
    # HINT: "lrelu1", "W1"); dlogits is (B,), the linear layer's output (B, 1); needs_input_grad goes to the first conv.
    dh, grads["disc.W3"], grads["disc.b3"] = linear_backward(dlogits[:, None], layers["W3"])  # (B, 2d·49)
    dh = leaky_relu_backward(dh.reshape(layers["lrelu2"][0].shape), layers["lrelu2"])  # (B, 2d, 7, 7)
    dh, grads["disc.bn2.gamma"], grads["disc.bn2.beta"] = batch_norm_backward(dh, layers["bn2"])  # (B, 2d, 7, 7)
    dh, grads["disc.W2"], _ = conv2d_backward(dh, layers["W2"])  # (B, d, 14, 14)
    dh = leaky_relu_backward(dh, layers["lrelu1"])  # (B, d, 14, 14)
    dx, grads["disc.W1"], grads["disc.b1"] = conv2d_backward(dh, layers["W1"], needs_input_grad)  # (B, 1, 28, 28) or None
    # END SOLUTION
    return dx, {name: grads[name] for name in DISC_NAMES}


# ----------------------------------------------------------------------------------------------
# One training step of each player, on the losses of scratch/gan.py
# ----------------------------------------------------------------------------------------------


def discriminator_step(x_real, z, params, stats, config):
    """(loss, grads of every "disc.*" parameter, new stats) on a real batch (B, 1, 28, 28) in [−1, 1] and noise z.

    Three training-mode forwards, each moving its network's running statistics in this order:
    G(z), D(x_real), D(G(z)). Real and fake batches go through D separately, so batch norm never
    mixes them (each batch is normalised by its own statistics, as the DCGAN reference code does).
    """
    x_fake, gen_cache = generator_forward(z, params, config)  # (B, 1, 28, 28); no gradient flows into G here
    stats = update_stats(stats, gen_cache, config.momentum)
    real_logits, real_cache = discriminator_forward(x_real, params, config)  # (B,)
    stats = update_stats(stats, real_cache, config.momentum)
    fake_logits, fake_cache = discriminator_forward(x_fake, params, config)  # (B,)
    stats = update_stats(stats, fake_cache, config.momentum)
    loss, loss_cache = discriminator_loss_forward(real_logits, fake_logits)
    d_real, d_fake = discriminator_loss_backward(1.0, loss_cache)  # (B,) each
    _, grads = discriminator_backward(d_real, real_cache, needs_input_grad=False)  # no gradient into either batch
    _, fake_grads = discriminator_backward(d_fake, fake_cache, needs_input_grad=False)
    # the same weights judged both batches  ⇒  their gradients add
    return loss, {name: grads[name] + fake_grads[name] for name in grads}, stats


def generator_step(z, params, stats, config, kind="non_saturating"):
    """(loss, grads of every "gen.*" parameter, new stats): back through D, held fixed, into G.

    Two training-mode forwards, G(z) then D(G(z)), each moving its running statistics.
    """
    x_fake, gen_cache = generator_forward(z, params, config)  # (B, 1, 28, 28)
    stats = update_stats(stats, gen_cache, config.momentum)
    fake_logits, disc_cache = discriminator_forward(x_fake, params, config)  # (B,)
    stats = update_stats(stats, disc_cache, config.momentum)
    loss, loss_cache = generator_loss_forward(fake_logits, kind)
    dx_fake, _ = discriminator_backward(generator_loss_backward(1.0, loss_cache), disc_cache)  # D's own grads dropped
    _, grads = generator_backward(dx_fake, gen_cache)
    return loss, grads, stats


def to_pixels(x):
    """G's images in [−1, 1] → pixels in [0, 1]: (x + 1) / 2."""
    return (x + 1.0) * 0.5


def from_pixels(x):
    """Pixels in [0, 1] → tanh's range [−1, 1]: 2x − 1, what D sees of the real data."""
    return x * 2.0 - 1.0
