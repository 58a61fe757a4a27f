"""The GPT in PyTorch: scratch/gpt.py with torch ops, every backward by autograd; then the model as
nanoGPT writes it, and the way to and from Hugging Face's GPT-2.

Read the first half beside scratch/gpt.py: the names, the arguments and the NumPy-in/NumPy-out
interface are the same; `gpt_forward` records the graph and `gpt_backward` replays it with
`torch.autograd.grad` instead of the hand-derived lines. Inputs are checked by scratch's own
helpers, so a bad input raises the same error here as there.

The second half: `GPT`, an `nn.Module` laid out as nanoGPT's `model.py` (`transformer.wte`, `.wpe`,
`.h[i].ln_1/attn/ln_2/mlp`, `.ln_f`, a `lm_head` tied to `wte`), with `to_torch_gpt` /
`from_torch_gpt`; and `to_hf_gpt2` / `from_hf_gpt2`, which turn a scratch parameter dict into a
`transformers.GPT2LMHeadModel` and back (the layout change is written out above them).

Sampling: `filter_logits` and `sample` come from ports/torch/sampling.py (torch ops, scratch's draw
from the same NumPy generator), re-exported here as scratch/gpt.py re-exports scratch's.
`GPT.generate` draws with a `torch.Generator` instead, as a PyTorch program would.

Shape letters as in scratch: B batch, T positions, V vocabulary, D model width, H heads, Dh = D / H.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ports.torch.attention import Cache, _gradients, _leaf
from ports.torch.sampling import _filter_logits, filter_logits, sample  # noqa: F401 (re-exported, as scratch/gpt.py does)
from ports.torch.transformer import _cross_entropy, _layer_norm, _multi_head
from scratch.attention import causal_mask
from scratch.gpt import GPTConfig, check_gpt_inputs, init_gpt, layer_names, parameter_shapes  # noqa: F401
from scratch.layers import GELU_C
from scratch.transformer import prefixed
from scratch.validate import as_float_array

__all__ = [
    "GPTConfig", "parameter_shapes", "init_gpt", "gelu_forward", "gelu_backward", "mlp_forward", "mlp_backward",
    "block_forward", "block_backward", "gpt_forward", "gpt_backward", "gpt_loss_forward", "gpt_loss_backward",
    "filter_logits", "sample",
    "GPT", "to_torch_gpt", "from_torch_gpt", "to_hf_gpt2", "from_hf_gpt2", "hf_state_dict", "scratch_from_hf_state_dict",
]


# ----------------------------------------------------------------------------------------------
# The building blocks on tensors (shared by the functions below and by nothing else)
# ----------------------------------------------------------------------------------------------


def _gelu(x):
    # Hendrycks and Gimpel 2016, Eq. 2, the tanh form: gelu(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))
    return 0.5 * x * (1.0 + torch.tanh(GELU_C * (x + 0.044715 * x * x * x)))


def _mlp(h, p):
    # mlp(h) = gelu(h W1 + b1) W2 + b2: widen to 4D, GELU, back to D
    return _gelu(h @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]  # (B, T, D)


def _block(x, p, n_head):
    """Pre-norm: x₁ = x + attn(ln_1(x)), causal; y = x₁ + mlp(ln_2(x₁)). p: one block's params, prefix removed."""
    mask = torch.from_numpy(causal_mask(x.shape[1]))  # (T, T), position t attends to positions ≤ t
    h1 = _layer_norm(x, p["ln_1.gamma"], p["ln_1.beta"])  # (B, T, D)
    x1 = x + _multi_head(h1, h1, prefixed(p, "attn."), n_head, mask)  # (B, T, D)
    return x1 + _mlp(_layer_norm(x1, p["ln_2.gamma"], p["ln_2.beta"]), prefixed(p, "mlp."))  # (B, T, D)


def _gpt(tokens, p, config):
    """logits (B, T, V) for token ids (B, T), an int64 tensor; p a dict of tensors in the scratch layout."""
    # x = wte[tokens] + wpe[0 … T−1]
    x = p["wte"][tokens] + p["wpe"][: tokens.shape[1]]  # (B, T, D)
    for i in range(config.n_layer):
        x = _block(x, prefixed(p, f"h.{i}."), config.n_head)  # (B, T, D)
    h = _layer_norm(x, p["ln_f.gamma"], p["ln_f.beta"])  # (B, T, D)
    # logits = ln_f(x) wteᵀ: the output layer is the token embedding, transposed (tied)
    return h @ p["wte"].T  # (B, T, V)


def _leaves(params, names):
    return {name: _leaf(np.asarray(params[name])) for name in names}


def _check_params(params, config):
    """scratch's checks of every parameter (names, shapes, one dtype), with no tokens to check."""
    check_gpt_inputs(np.zeros((0, 1), np.int64), params, config)
    return np.asarray(params["wte"]).dtype


# ----------------------------------------------------------------------------------------------
# GELU, the MLP and the block
# ----------------------------------------------------------------------------------------------


def gelu_forward(x):
    """gelu(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³))), scratch/layers.py's GELU."""
    xt = _leaf(as_float_array("x", x))
    y = _gelu(xt)
    return y.detach().numpy(), Cache((xt,), y)


def gelu_backward(dout, cache):
    (dx,) = _gradients(dout, cache)
    return dx


MLP_NAMES = ("W1", "b1", "W2", "b2")


def mlp_forward(h, p):
    """mlp(h) = gelu(h W1 + b1) W2 + b2 for h (B, T, D): widen to 4D, GELU, back to D."""
    ht, pt = _leaf(as_float_array("h", h)), _leaves(p, MLP_NAMES)
    m = _mlp(ht, pt)  # (B, T, D)
    return m.detach().numpy(), Cache((ht, *pt.values()), m)


def mlp_backward(dm, cache):
    dh, *grads = _gradients(dm, cache)
    return dh, dict(zip(MLP_NAMES, grads))


def block_forward(x, params, i, n_head):
    """Block i of the stack on x (B, T, D), causal; returns (y (B, T, D), cache)."""
    names = layer_names(i)
    xt, p = _leaf(as_float_array("x", x)), _leaves(params, names)
    y = _block(xt, prefixed(p, f"h.{i}."), n_head)  # (B, T, D)
    return y.detach().numpy(), (Cache((xt, *p.values()), y), names)


def block_backward(dy, cache):
    """Return (dx, grads) with grads keyed like block i's parameters ("h.{i}.…")."""
    cache, names = cache
    dx, *grads = _gradients(dy, cache)
    return dx, dict(zip(names, grads))


# ----------------------------------------------------------------------------------------------
# The model and its language-model loss
# ----------------------------------------------------------------------------------------------


def gpt_forward(tokens, params, config):
    """logits (B, T, V) for tokens (B, T): logits[:, t] scores the token after position t, from positions ≤ t."""
    tokens = check_gpt_inputs(tokens, params, config)
    p = _leaves(params, parameter_shapes(config))
    logits = _gpt(torch.from_numpy(tokens.astype(np.int64)), p, config)  # (B, T, V)
    return logits.detach().numpy(), (Cache(tuple(p.values()), logits), tuple(p))


def gpt_backward(dlogits, cache):
    """grads for every parameter, keyed and ordered like params, from dlogits (B, T, V)."""
    cache, names = cache
    return dict(zip(names, _gradients(dlogits, cache)))


def gpt_loss_forward(tokens, params, config, pad_id=None):
    """The causal language-model loss of sequences tokens (B, T + 1): each position predicts the next.

    Inputs tokens[:, :−1], targets tokens[:, 1:]; the mean cross-entropy in nats over the targets
    that are not `pad_id`. Returns (loss, cache).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must have shape (B, T + 1) with T ≥ 1 (inputs and the targets shifted by one), "
                         f"got shape {tokens.shape}")
    inputs = check_gpt_inputs(tokens[:, :-1], params, config)
    p = _leaves(params, parameter_shapes(config))
    logits = _gpt(torch.from_numpy(inputs.astype(np.int64)), p, config)  # (B, T, V)
    targets = torch.from_numpy(tokens[:, 1:].reshape(-1).astype(np.int64))  # (B·T,)
    counted = torch.ones_like(targets, dtype=torch.bool) if pad_id is None else targets != pad_id
    # −(1/N) Σ log softmax(logits)[target], N the number of targets that are not padding
    loss = _cross_entropy(logits.reshape(-1, config.vocab_size), targets, counted, 0.0)
    return float(loss.detach()), (Cache(tuple(p.values()), loss), tuple(p))


def gpt_loss_backward(dloss, cache):
    """grads of dloss · loss for every parameter."""
    cache, names = cache
    return dict(zip(names, _gradients(np.asarray(dloss), cache)))


# ----------------------------------------------------------------------------------------------
# The model as nanoGPT writes it
# ----------------------------------------------------------------------------------------------
# nn.Linear keeps its weight as (out, in), y = x Wᵀ + b, so each scratch (in, out) matrix is
# transposed going in and out, and the attention's W_q, W_k, W_v are stacked as the rows of one
# c_attn.weight (3D, D), as nanoGPT has them. The token embedding's (V, D) table is already
# lm_head's (out, in) weight: tying shares one Parameter, whose gradient is the sum of both uses.


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention: one product for q, k and v (c_attn), one out (c_proj)."""

    def __init__(self, config, dtype=torch.float32):
        super().__init__()
        d = config.d_model
        self.n_head = config.n_head
        self.c_attn = nn.Linear(d, 3 * d, dtype=dtype)
        self.c_proj = nn.Linear(d, d, dtype=dtype)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)  # (B, T, D) each
        q, k, v = (a.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for a in (q, k, v))  # (B, H, T, Dh)
        # softmax(QKᵀ/√Dh + causal mask) V in one fused call (a query always sees itself, so no empty row)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class MLP(nn.Module):
    def __init__(self, config, dtype=torch.float32):
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, 4 * config.d_model, dtype=dtype)
        self.c_proj = nn.Linear(4 * config.d_model, config.d_model, dtype=dtype)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, config, dtype=torch.float32):
        super().__init__()
        d = config.d_model
        self.ln_1 = nn.LayerNorm(d, eps=1e-5, dtype=dtype)
        self.attn = CausalSelfAttention(config, dtype)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5, dtype=dtype)
        self.mlp = MLP(config, dtype)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # pre-norm: the residual path itself is never normalised
        return x + self.mlp(self.ln_2(x))  # (B, T, D)


class GPT(nn.Module):
    """The decoder-only Transformer of scratch/gpt.py as an nn.Module.

    `model(idx (B, T) int64)` → logits (B, T, V); `model(idx, targets)` → (logits, loss), the mean
    cross-entropy over the targets that are not `ignore_index`. `generate` samples continuations.
    Build one from scratch weights with `to_torch_gpt`; a fresh GPT(config) has torch's default init.
    """

    def __init__(self, config, dtype=torch.float32):
        super().__init__()
        self.config = config
        d = config.d_model
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, d, dtype=dtype),
            wpe=nn.Embedding(config.block_size, d, dtype=dtype),
            h=nn.ModuleList([Block(config, dtype) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(d, eps=1e-5, dtype=dtype),
        ))
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False, dtype=dtype)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying (Press and Wolf 2017)

    def forward(self, idx, targets=None, ignore_index=-100):
        t = idx.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"idx has {t} positions; the model takes at most block_size = {self.config.block_size}")
        pos = torch.arange(t, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, D)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """idx (B, T) followed by up to `max_new_tokens` sampled tokens.

        As nanoGPT's, no key/value cache: the whole sequence is run again at every step. Unlike
        nanoGPT's, no window slides: generation stops at block_size + 1 tokens, where the learned
        positions end (as scratch's generate). Temperature 0 takes the argmax; otherwise logits /
        temperature, then top-k and top-p, then a draw from the softmax with `generator` (a
        torch.Generator, for repeatable samples; its draws are not scratch's).
        """
        for _ in range(min(int(max_new_tokens), self.config.block_size + 1 - idx.shape[1])):
            logits = self(idx)[:, -1]  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                probs = torch.softmax(_filter_logits(logits / float(temperature), top_k, top_p), dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def _linear_weights(module):
    """{scratch name: (torch parameter, stored transposed?)}, c_attn's rows split into W_q, W_k, W_v."""
    t = module.transformer
    named = {"wte": (t.wte.weight, False), "wpe": (t.wpe.weight, False)}
    for i, block in enumerate(t.h):
        p = f"h.{i}."
        named[p + "ln_1.gamma"], named[p + "ln_1.beta"] = (block.ln_1.weight, False), (block.ln_1.bias, False)
        named[p + "attn.W_o"], named[p + "attn.b_o"] = (block.attn.c_proj.weight, True), (block.attn.c_proj.bias, False)
        named[p + "ln_2.gamma"], named[p + "ln_2.beta"] = (block.ln_2.weight, False), (block.ln_2.bias, False)
        named[p + "mlp.W1"], named[p + "mlp.b1"] = (block.mlp.c_fc.weight, True), (block.mlp.c_fc.bias, False)
        named[p + "mlp.W2"], named[p + "mlp.b2"] = (block.mlp.c_proj.weight, True), (block.mlp.c_proj.bias, False)
    named["ln_f.gamma"], named["ln_f.beta"] = (t.ln_f.weight, False), (t.ln_f.bias, False)
    return named


def to_torch_gpt(params, config):
    """A `GPT` nn.Module holding copies of a scratch parameter dict (same dtype)."""
    dtype = torch.from_numpy(np.array([], _check_params(params, config))).dtype
    module = GPT(config, dtype)
    a = lambda name: torch.from_numpy(np.asarray(params[name]))  # noqa: E731
    with torch.no_grad():
        for name, (p, transposed) in _linear_weights(module).items():
            p.copy_(a(name).T if transposed else a(name))
        for i, block in enumerate(module.transformer.h):
            pre = f"h.{i}.attn."
            block.attn.c_attn.weight.copy_(torch.cat([a(pre + "W_q").T, a(pre + "W_k").T, a(pre + "W_v").T]))  # (3D, D)
            block.attn.c_attn.bias.copy_(torch.cat([a(pre + "b_q"), a(pre + "b_k"), a(pre + "b_v")]))  # (3D,)
    return module


def from_torch_gpt(module):
    """The scratch parameter dict of a `GPT` nn.Module, in parameter_shapes order (the inverse of the above)."""
    copy = lambda tensor: tensor.detach().contiguous().numpy().copy()  # noqa: E731
    params = {name: copy(p.T if transposed else p) for name, (p, transposed) in _linear_weights(module).items()}
    for i, block in enumerate(module.transformer.h):
        w, b = block.attn.c_attn.weight.detach().chunk(3, dim=0), block.attn.c_attn.bias.detach().chunk(3)
        for which, w_part, b_part in zip("qkv", w, b):
            params[f"h.{i}.attn.W_{which}"], params[f"h.{i}.attn.b_{which}"] = copy(w_part.T), copy(b_part)
    return {name: params[name] for name in parameter_shapes(module.config)}


# ----------------------------------------------------------------------------------------------
# Hugging Face's GPT-2: transformers.GPT2LMHeadModel
# ----------------------------------------------------------------------------------------------
# GPT-2's layers are `Conv1D`s, which (unlike nn.Linear) keep the weight as (in, out), y = x W + b:
# scratch's layout, so nothing is transposed. The parameters, scratch ↔ transformers:
#
#   wte (V, D)                    transformer.wte.weight (lm_head.weight is the same tensor: tied)
#   wpe (block_size, D)           transformer.wpe.weight (n_positions = block_size rows)
#   h.{i}.ln_1.gamma / .beta      transformer.h.{i}.ln_1.weight / .bias
#   h.{i}.attn.W_q, W_k, W_v      transformer.h.{i}.attn.c_attn.weight (D, 3D) = [W_q | W_k | W_v],
#   h.{i}.attn.b_q, b_k, b_v        c_attn.bias (3D,) = [b_q | b_k | b_v]; within each block of D
#                                   columns head h owns columns h·Dh … (h+1)·Dh − 1, as in scratch
#   h.{i}.attn.W_o / b_o          transformer.h.{i}.attn.c_proj.weight (D, D) / .bias
#   h.{i}.ln_2.gamma / .beta      transformer.h.{i}.ln_2.weight / .bias
#   h.{i}.mlp.W1 (D, 4D) / b1     transformer.h.{i}.mlp.c_fc.weight / .bias
#   h.{i}.mlp.W2 (4D, D) / b2     transformer.h.{i}.mlp.c_proj.weight / .bias
#   ln_f.gamma / .beta            transformer.ln_f.weight / .bias
#
# and the configuration that makes GPT2LMHeadModel compute what scratch computes: n_embd = D,
# n_head = H, n_layer, n_positions = block_size, vocab_size = V, n_inner = 4D,
# activation_function "gelu_new" (the tanh GELU), layer_norm_epsilon 1e-5, scale_attn_weights
# (the 1/√Dh), no per-layer scaling and no upcasting reorder, tied embeddings, every dropout 0.

_HF_MATCHES_SCRATCH = {
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),  # two spellings of the tanh GELU
    "layer_norm_epsilon": (1e-5,),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "add_cross_attention": (False,),
    "tie_word_embeddings": (True,),
}


def _hf_names(i=None):
    """{scratch suffix: (transformers name, which third of c_attn or None)} for block i, or the rest."""
    if i is None:
        return {"wte": "transformer.wte.weight", "wpe": "transformer.wpe.weight",
                "ln_f.gamma": "transformer.ln_f.weight", "ln_f.beta": "transformer.ln_f.bias"}
    h = f"transformer.h.{i}."
    return {"ln_1.gamma": h + "ln_1.weight", "ln_1.beta": h + "ln_1.bias", "attn.W_o": h + "attn.c_proj.weight",
            "attn.b_o": h + "attn.c_proj.bias", "ln_2.gamma": h + "ln_2.weight", "ln_2.beta": h + "ln_2.bias",
            "mlp.W1": h + "mlp.c_fc.weight", "mlp.b1": h + "mlp.c_fc.bias", "mlp.W2": h + "mlp.c_proj.weight",
            "mlp.b2": h + "mlp.c_proj.bias"}


def hf_state_dict(params, config):
    """scratch params → the state dict of GPT2LMHeadModel, as tensors (c_attn assembled from W_q, W_k, W_v)."""
    a = lambda name: torch.from_numpy(np.asarray(params[name]))  # noqa: E731
    state = {theirs: a(ours) for ours, theirs in _hf_names().items()}
    for i in range(config.n_layer):
        state.update({theirs: a(f"h.{i}.{ours}") for ours, theirs in _hf_names(i).items()})
        pre = f"h.{i}.attn."
        state[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat([a(pre + "W_q"), a(pre + "W_k"), a(pre + "W_v")], 1)
        state[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat([a(pre + "b_q"), a(pre + "b_k"), a(pre + "b_v")])
    return state


def scratch_from_hf_state_dict(state, config):
    """The inverse: GPT2LMHeadModel's parameters (name → tensor) → scratch params, in parameter_shapes order."""
    copy = lambda tensor: tensor.detach().contiguous().numpy().copy()  # noqa: E731
    params = {ours: copy(state[theirs]) for ours, theirs in _hf_names().items()}
    for i in range(config.n_layer):
        params.update({f"h.{i}.{ours}": copy(state[theirs]) for ours, theirs in _hf_names(i).items()})
        w = state[f"transformer.h.{i}.attn.c_attn.weight"].detach().chunk(3, dim=1)  # (D, D) each
        b = state[f"transformer.h.{i}.attn.c_attn.bias"].detach().chunk(3)
        for which, w_part, b_part in zip("qkv", w, b):
            params[f"h.{i}.attn.W_{which}"], params[f"h.{i}.attn.b_{which}"] = copy(w_part), copy(b_part)
    return {name: params[name] for name in parameter_shapes(config)}


def to_hf_gpt2(params, config, bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="eager"):
    """A `transformers.GPT2LMHeadModel` (in eval mode) computing what scratch's gpt_forward computes.

    Its dtype is the params' (float64 params give a float64 model). The token ids are written into
    its config for `generate` (our names vocabulary uses one id for begin and end, so pass it as
    both). `attn_implementation`: "eager" (GPT-2's own softmax(QKᵀ/√Dh + mask) V) or "sdpa"
    (torch's fused kernel); both equal scratch (checks/test_gpt_hf.py). Nothing is downloaded.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    _check_params(params, config)
    hf_config = GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.d_model, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=4 * config.d_model, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, tie_word_embeddings=True,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        attn_implementation=attn_implementation,
    )
    dtype = torch.from_numpy(np.asarray(params["wte"])).dtype
    model = GPT2LMHeadModel(hf_config).to(dtype)
    missing, unexpected = model.load_state_dict(hf_state_dict(params, config), strict=False)
    # lm_head.weight is not in the state dict: it is wte's tensor, which is
    if [m for m in missing if m != "lm_head.weight"] or unexpected or model.lm_head.weight is not model.transformer.wte.weight:
        raise RuntimeError(f"GPT2LMHeadModel did not take the weights: missing {missing}, unexpected {unexpected}")
    return model.eval()


def from_hf_gpt2(model):
    """(params, config) of a `transformers.GPT2LMHeadModel` whose configuration scratch can compute.

    Raises ValueError naming the setting when the model differs from scratch's GPT (another
    activation or epsilon, untied embeddings, an inner width other than 4D, …).
    """
    c = model.config
    for key, allowed in _HF_MATCHES_SCRATCH.items():
        if getattr(c, key) not in allowed:
            raise ValueError(f"model.config.{key} is {getattr(c, key)!r}; scratch's GPT needs one of {allowed}")
    if c.n_inner not in (None, 4 * c.n_embd):
        raise ValueError(f"model.config.n_inner is {c.n_inner}; scratch's GPT needs 4 · n_embd = {4 * c.n_embd}")
    config = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                       d_model=c.n_embd)
    return scratch_from_hf_state_dict(dict(model.named_parameters()), config), config
