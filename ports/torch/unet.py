"""The digit U-Net in PyTorch: scratch/unet.py's network as a `torch.nn.Module`, the backward by autograd.

Read it beside scratch/unet.py, whose docstring draws the network: the same blocks in the same
order, built from PyTorch's own layers (nn.Conv2d, nn.GroupNorm, nn.Linear, nn.SiLU; nearest-
neighbour upsampling as F.interpolate). `unet_forward` / `unet_backward` keep scratch's interface
(a scratch-layout parameter dict in, NumPy out; autograd in place of the hand-written backward);
`to_torch_unet` / `from_torch_unet` move weights between the scratch layout and the module. The
layouts agree everywhere but the Linear weights: scratch's W is (in, out), torch's weight (out, in).
The word table is an nn.Embedding with one row per digit word and the null token's row NULL = 10.

Shape letters as in scratch: B batch, C channels (c1, c2, c3), H W the image, E the embedding width,
S the sinusoid width of the time embedding.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ports.torch.attention import Cache, _gradients
from ports.torch.diffusion import _time_embedding
from scratch.diffusion import Denoiser
from scratch.unet import (NULL, UNetConfig, block_channels, check_config, check_params, check_unet_inputs, init_unet,
                         parameter_shapes)

__all__ = ["UNetConfig", "parameter_shapes", "init_unet", "UNet", "to_torch_unet", "from_torch_unet", "parameter_map",
           "unet_forward", "unet_backward", "UNET_DENOISER"]


class ResBlock(nn.Module):
    """res(x, e) = x' + conv(SiLU(GN(conv(SiLU(GN(x))) + W_e SiLU(e) + b_e))), x' = x or a 1×1 conv of x."""

    def __init__(self, c_in, c_out, emb_dim, groups):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in, eps=1e-5), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out, eps=1e-5), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, e_act):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.emb(e_act)[:, :, None, None]  # one shift per channel, from the embedding
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, H, W)
        return h + (x if self.skip is None else self.skip(x))


class UNet(nn.Module):
    """ε̂(x_t, t, word): x_t (B, 1, H, W), t (B,) int64, cond (B,) word ids (None: every row ∅) → (B, 1, H, W)."""

    def __init__(self, config):
        super().__init__()
        check_config(config)
        self.config = config
        c1, c2, c3 = config.channels
        e, g = config.emb_dim, config.groups
        self.time1, self.time2 = nn.Linear(config.time_dim, e), nn.Linear(e, e)
        self.word = nn.Embedding(NULL + 1, e)  # rows 0 … 9 the digit words, row NULL the null token ∅
        self.conv_in = nn.Conv2d(1, c1, 3, padding=1)
        self.down1, self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.to_full = nn.Conv2d(c2, c1, 1)
        self.blocks = nn.ModuleDict({name: ResBlock(c_in, c_out, e, g)
                                     for name, (c_in, c_out) in block_channels(config).items()})
        self.norm_out, self.conv_out = nn.GroupNorm(g, c1, eps=1e-5), nn.Conv2d(c1, 1, 3, padding=1)

    def forward(self, x_t, t, cond=None):
        if cond is None:
            cond = torch.full((len(x_t),), NULL, dtype=torch.int64, device=x_t.device)
        # e = W₂ SiLU(W₁ PE(t) + b₁) + b₂ + table[word]
        e = self.time2(F.silu(self.time1(_time_embedding(t, self.config.time_dim, x_t.dtype)))) + self.word(cond)  # (B, E)
        e_act = F.silu(e)  # (B, E), what every block projects
        h0 = self.conv_in(x_t)  # (B, c1, H, W)
        skip = self.blocks["enc"](self.down1(h0), e_act)  # (B, c2, H/2, W/2)
        h = self.blocks["mid"](self.down2(skip), e_act)  # (B, c3, H/4, W/4)
        h = F.interpolate(h, scale_factor=2, mode="nearest")  # (B, c3, H/2, W/2): each pixel a 2×2 block
        h = self.blocks["dec"](torch.cat([h, skip], dim=1), e_act)  # (B, c2, H/2, W/2): ⊕ the skip
        h = F.interpolate(self.to_full(h), scale_factor=2, mode="nearest")  # (B, c1, H, W)
        h = self.blocks["full"](h + h0, e_act)  # (B, c1, H, W): + the full-resolution maps
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 1, H, W)


def parameter_map(module):
    """scratch name → (torch parameter, stored transposed?): every parameter of parameter_shapes."""
    named = {"unet.time.W1": (module.time1.weight, True), "unet.time.b1": (module.time1.bias, False),
             "unet.time.W2": (module.time2.weight, True), "unet.time.b2": (module.time2.bias, False),
             "unet.word.table": (module.word.weight, False)}
    for name in ("conv_in", "down1", "down2", "to_full", "conv_out"):
        layer = getattr(module, name)
        named[f"unet.{name}.w"], named[f"unet.{name}.b"] = (layer.weight, False), (layer.bias, False)
    for name, block in module.blocks.items():
        p = f"unet.{name}"
        for norm in ("norm1", "norm2"):
            layer = getattr(block, norm)
            named[f"{p}.{norm}.gamma"], named[f"{p}.{norm}.beta"] = (layer.weight, False), (layer.bias, False)
        for conv in ("conv1", "conv2") + (("skip",) if block.skip is not None else ()):
            layer = getattr(block, conv)
            named[f"{p}.{conv}.w"], named[f"{p}.{conv}.b"] = (layer.weight, False), (layer.bias, False)
        named[f"{p}.emb.W"], named[f"{p}.emb.b"] = (block.emb.weight, True), (block.emb.bias, False)
    named["unet.norm_out.gamma"], named["unet.norm_out.beta"] = (module.norm_out.weight, False), (module.norm_out.bias, False)
    return named


def to_torch_unet(params, config):
    """A UNet holding a scratch parameter dict's weights (copied; the Linear weights transposed to (out, in))."""
    check_params(params, config)
    module = UNet(config).to(torch.from_numpy(np.asarray(params["unet.conv_in.w"])).dtype)
    with torch.no_grad():
        for name, (p, transposed) in parameter_map(module).items():
            value = torch.from_numpy(np.asarray(params[name]))
            p.copy_(value.T if transposed else value)
    return module


def from_torch_unet(module):
    """The scratch parameter dict of a UNet (the inverse of to_torch_unet), in parameter_shapes' order."""
    named = parameter_map(module)
    return {name: (named[name][0].detach().T if named[name][1] else named[name][0].detach()).contiguous().cpu().numpy().copy()
            for name in parameter_shapes(module.config)}


def unet_forward(params, x_t, t, config, cond=None):
    """scratch's unet_forward: (ε̂ (B, 1, H, W), cache), the module built from `params` and recorded by autograd."""
    x_t, t, cond = check_unet_inputs(params, x_t, t, config, cond)
    module = to_torch_unet(params, config)
    named = parameter_map(module)
    eps = module(torch.from_numpy(x_t), torch.from_numpy(t), torch.from_numpy(cond))  # (B, 1, H, W)
    names = list(parameter_shapes(config))
    return eps.detach().numpy(), (Cache(tuple(named[n][0] for n in names), eps), [(n, named[n][1]) for n in names])


def unet_backward(d_eps, cache):
    """The gradients of every parameter, in the scratch layout, for d_eps = ∂loss/∂ε̂ (B, 1, H, W)."""
    recorded, names = cache
    grads = _gradients(d_eps, recorded)
    return {name: np.ascontiguousarray(g.T) if transposed else g for (name, transposed), g in zip(names, grads)}


UNET_DENOISER = Denoiser(init_unet, unet_forward, unet_backward, parameter_shapes)  # scratch/diffusion.py's interface
