"""A small convolutional digit classifier: the "Inception network" of the scores in scratch/metrics.py.

FID, KID and precision/recall compare generated images with real ones in the feature space of
a classifier trained on real images (Heusel et al. 2017 use Inception v3's pool layer, trained
on ImageNet). For 28×28 digits an ImageNet network is the wrong ruler and a download besides,
so the ruler here is this network, trained on the 4,000 training digits (scratch/scoring.py):
its penultimate layer gives the features, its softmax the class probabilities of the Inception
Score analogue.

Shape letters: B batch, C channels, H W height and width, F features, K classes.

    x (B, 1, 28, 28)
    → conv 3×3, stride 1, pad 1 → relu    (B, C1, 28, 28)
    → conv 3×3, stride 2, pad 1 → relu    (B, C2, 14, 14)
    → conv 3×3, stride 2, pad 1 → relu    (B, C3, 7, 7)
    → flatten → linear → relu             (B, F)   the features
    → dropout (training only)             (B, F)
    → linear                              (B, K)   the logits

No batch norm: outside training the network is a fixed function of its parameters, so one image
gets the same features alone or in a batch. Dropout on the features (Srivastava et al. 2014)
while training only: 4,000 digits overfit a 400,000-weight layer without it. Every backward is
the chain of the pairs in scratch/conv.py and scratch/layers.py.
"""

from typing import NamedTuple

import numpy as np

from scratch.conv import conv2d_backward, conv2d_forward
from scratch.layers import (
    dropout_backward,
    dropout_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
)
from scratch.validate import as_float_array, check_ndim


class ClassifierConfig(NamedTuple):
    channels: tuple = (16, 32, 64)  # C1, C2, C3
    features: int = 128  # F, the width of the penultimate layer
    classes: int = 10  # K
    image: int = 28  # the images are (1, image, image)


CONVS = (("conv1", 1), ("conv2", 2), ("conv3", 2))  # (name, stride); every kernel 3×3 with padding 1


def _out_size(size, stride):
    # Dumoulin & Visin 2016: o = ⌊(i + 2p − k) / s⌋ + 1 with k = 3, p = 1
    return (size + 2 - 3) // stride + 1


def parameter_shapes(config):
    """{name: shape} of every parameter, in the order of the forward."""
    shapes, c_in, size = {}, 1, config.image
    for (name, stride), c_out in zip(CONVS, config.channels):
        shapes[f"{name}.w"], shapes[f"{name}.b"] = (c_out, c_in, 3, 3), (c_out,)
        c_in, size = c_out, _out_size(size, stride)
    shapes["fc.W"], shapes["fc.b"] = (c_in * size * size, config.features), (config.features,)
    shapes["out.W"], shapes["out.b"] = (config.features, config.classes), (config.classes,)
    return shapes


def init_classifier(config, rng, dtype=np.float64):
    """He-normal weights (He et al. 2015: variance 2 / fan-in, for ReLU layers), zero biases."""
    params = {}
    for name, shape in parameter_shapes(config).items():
        if name.endswith((".w", ".W")):
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
            params[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
        else:
            params[name] = np.zeros(shape, dtype=dtype)
    return params


def check_images(x, config, name="x"):
    """x as a float array (B, 1, image, image); a ValueError naming the shapes otherwise."""
    x = as_float_array(name, x)
    check_ndim(name, x, 4, f"(B, 1, {config.image}, {config.image})")
    if x.shape[1:] != (1, config.image, config.image):
        raise ValueError(f"{name} must have shape (B, 1, {config.image}, {config.image}), got {x.shape}")
    return x


class ClassifierCache(NamedTuple):
    convs: list  # per conv layer: (conv cache, relu cache)
    conv_shape: tuple  # (B, C3, h, w), the last conv's output, before flattening
    fc: tuple  # (linear cache, relu cache)
    dropout: object  # the dropout mask, or None outside training
    out: object  # the output layer's linear cache
    features: np.ndarray  # (B, F), before dropout


def classifier_forward(x, params, config, dropout=0.0, rng=None):
    """(logits (B, K), cache) for images x (B, 1, H, W); cache.features is the penultimate layer (B, F).

    dropout p with a np.random.Generator rng while training; p = 0 or rng None (the default) is evaluation.
    """
    h = check_images(x, config)
    convs = []
    for name, stride in CONVS:
        h, conv_cache = conv2d_forward(h, params[f"{name}.w"], params[f"{name}.b"], stride=stride, padding=1)
        h, relu_cache = relu_forward(h)  # (B, C, H', W')
        convs.append((conv_cache, relu_cache))
    conv_shape = h.shape  # (B, C3, 7, 7)
    h, fc_cache = linear_forward(h.reshape(len(h), -1), params["fc.W"], params["fc.b"])  # (B, F)
    features, fc_relu = relu_forward(h)  # (B, F)
    dropped, mask = dropout_forward(features, dropout, rng)  # (B, F)
    logits, out_cache = linear_forward(dropped, params["out.W"], params["out.b"])  # (B, K)
    return logits, ClassifierCache(convs, conv_shape, (fc_cache, fc_relu), mask, out_cache, features)


def classifier_backward(dlogits, cache):
    """The gradients of every parameter given dlogits (B, K), with the parameters' keys."""
    grads = {}
    ddropped, grads["out.W"], grads["out.b"] = linear_backward(dlogits, cache.out)  # (B, F)
    dfeatures = dropout_backward(ddropped, cache.dropout)  # (B, F), the same mask
    fc_cache, fc_relu = cache.fc
    dh, grads["fc.W"], grads["fc.b"] = linear_backward(relu_backward(dfeatures, fc_relu), fc_cache)  # (B, C3·7·7)
    dh = dh.reshape(cache.conv_shape)  # (B, C3, 7, 7), undoing the flatten
    for (name, _), (conv_cache, relu_cache) in zip(reversed(CONVS), reversed(cache.convs)):
        dh, grads[f"{name}.w"], grads[f"{name}.b"] = conv2d_backward(relu_backward(dh, relu_cache), conv_cache)
    return grads


def softmax(logits):
    """Row-wise softmax with the max subtracted (no overflow)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)  # (B, K)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _batched(x, params, config, batch_size):
    """(features (N, F), logits (N, K)) of many images, a batch at a time (im2col's copy is ~9× the batch)."""
    x = check_images(x, config, "images")
    features, logits = [], []
    for start in range(0, len(x), batch_size):
        out, cache = classifier_forward(x[start:start + batch_size], params, config)
        features.append(cache.features)
        logits.append(out)
    width = (config.features, config.classes)
    if not features:
        return tuple(np.zeros((0, w), dtype=x.dtype) for w in width)
    return np.concatenate(features), np.concatenate(logits)


def features(images, params, config, batch_size=500):
    """The penultimate layer (N, F) of images (N, 1, H, W): what FID, KID and precision/recall compare."""
    return _batched(images, params, config, batch_size)[0]


def probabilities(images, params, config, batch_size=500):
    """p(y | x), (N, K), for images (N, 1, H, W): what the Inception Score analogue averages."""
    return softmax(_batched(images, params, config, batch_size)[1])
