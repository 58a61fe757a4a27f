"""The GPT in Keras 3: scratch/gpt.py with keras.ops, then the model the Keras way, trained by `fit`.

Read the first half beside scratch/gpt.py: the names, the arguments and the NumPy-in/NumPy-out
interface are the same. Each forward is written with backend-neutral `keras.ops` and recorded by
ports/keras/autodiff.py's `record`; each backward is that file's `gradients`. Inputs are checked
by scratch's own helpers, so a bad input raises the same error here as there.

The second half: `GPT`, a `keras.Model` of Keras's own layers (`Embedding` for wte and wpe,
`GPTBlock`s of `LayerNormalization`, `MultiHeadAttention(use_causal_mask=True)` and two `Dense`,
a final `LayerNormalization`, logits through wte transposed), whose `compute_loss` is the
next-token cross-entropy with padding ignored, so `model.fit(inputs, targets)` trains it;
`GPT.generate`, its own sampling loop; and `to_keras_gpt` / `from_keras_gpt`.

Shape letters as in scratch: B batch, T positions, V vocabulary, D model width, H heads, Dh = D / H.
"""

import math

import keras
import numpy as np
from keras import ops

from ports.keras.attention import _attention, merge_heads, split_heads
from ports.keras.autodiff import gradients, record
from ports.keras.sampling import filter_logits, sample  # noqa: F401 (re-exported, as scratch/gpt.py does)
from ports.keras.transformer import _cross_entropy, _layer_norm
from scratch.attention import causal_mask
from scratch.gpt import GPTConfig, check_gpt_inputs, init_gpt, layer_names, parameter_shapes  # noqa: F401
from scratch.layers import GELU_C
from scratch.transformer import prefixed
from scratch.validate import as_float_array

__all__ = [
    "GPTConfig", "parameter_shapes", "init_gpt", "gelu_forward", "gelu_backward", "mlp_forward", "mlp_backward",
    "block_forward", "block_backward", "gpt_forward", "gpt_backward", "gpt_loss_forward", "gpt_loss_backward",
    "filter_logits", "sample", "GPTBlock", "GPT", "to_keras_gpt", "from_keras_gpt",
]


# ----------------------------------------------------------------------------------------------
# The building blocks on tensors
# ----------------------------------------------------------------------------------------------


def _gelu(x):
    # Hendrycks and Gimpel 2016, Eq. 2, the tanh form: gelu(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))
    return 0.5 * x * (1.0 + ops.tanh(GELU_C * (x + 0.044715 * x * x * x)))


def _mlp(h, p):
    # mlp(h) = gelu(h W1 + b1) W2 + b2: widen to 4D, GELU, back to D
    return ops.matmul(_gelu(ops.matmul(h, p["W1"]) + p["b1"]), p["W2"]) + p["b2"]  # (B, T, D)


def _self_attention(x, p, n_head, mask):
    """Causal MultiHead(x, x) as ports/keras/attention.py computes it."""
    q = split_heads(ops.matmul(x, p["W_q"]) + p["b_q"], n_head)  # (B, H, T, Dh)
    k = split_heads(ops.matmul(x, p["W_k"]) + p["b_k"], n_head)  # (B, H, T, Dh)
    v = split_heads(ops.matmul(x, p["W_v"]) + p["b_v"], n_head)  # (B, H, T, Dh)
    return ops.matmul(merge_heads(_attention(q, k, v, mask)), p["W_o"]) + p["b_o"]  # (B, T, D)


def _block(x, p, n_head):
    """Pre-norm: x₁ = x + attn(ln_1(x)), causal; y = x₁ + mlp(ln_2(x₁)). p: one block's params, prefix removed."""
    mask = ops.convert_to_tensor(causal_mask(x.shape[1]))  # (T, T), position t attends to positions ≤ t
    h1 = _layer_norm(x, p["ln_1.gamma"], p["ln_1.beta"])  # (B, T, D)
    x1 = x + _self_attention(h1, prefixed(p, "attn."), n_head, mask)  # (B, T, D)
    return x1 + _mlp(_layer_norm(x1, p["ln_2.gamma"], p["ln_2.beta"]), prefixed(p, "mlp."))  # (B, T, D)


def _gpt(tokens, p, config):
    """logits (B, T, V) for token ids (B, T), an integer tensor; p a dict of tensors in the scratch layout."""
    # x = wte[tokens] + wpe[0 … T−1]
    x = ops.take(p["wte"], tokens, axis=0) + p["wpe"][: tokens.shape[1]]  # (B, T, D)
    for i in range(config.n_layer):
        x = _block(x, prefixed(p, f"h.{i}."), config.n_head)  # (B, T, D)
    h = _layer_norm(x, p["ln_f.gamma"], p["ln_f.beta"])  # (B, T, D)
    # logits = ln_f(x) wteᵀ: the output layer is the token embedding, transposed (tied)
    return ops.matmul(h, ops.transpose(p["wte"]))  # (B, T, V)


def _record(fn, params, names, *leading):
    """record fn(*leading, dict of params) with the leading arrays and every named parameter watched."""
    n = len(leading)
    out, cache = record(lambda *ts: fn(*ts[:n], dict(zip(names, ts[n:]))), *leading,
                        *(np.asarray(params[name]) for name in names))
    return out, (cache, n, tuple(names))


def _gradients(dout, cache):
    """(gradients of the leading inputs, dict of parameter gradients) of a `_record`."""
    cache, n, names = cache
    grads = gradients(dout, cache)
    return grads[:n], dict(zip(names, grads[n:]))


def _ids(tokens):
    return ops.convert_to_tensor(np.asarray(tokens).astype(np.int64))


# ----------------------------------------------------------------------------------------------
# GELU, the MLP and the block
# ----------------------------------------------------------------------------------------------


def gelu_forward(x):
    """gelu(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³))), scratch/layers.py's GELU."""
    return record(_gelu, as_float_array("x", x))


def gelu_backward(dout, cache):
    (dx,) = gradients(dout, cache)
    return dx


MLP_NAMES = ("W1", "b1", "W2", "b2")


def mlp_forward(h, p):
    """mlp(h) = gelu(h W1 + b1) W2 + b2 for h (B, T, D): widen to 4D, GELU, back to D."""
    return _record(_mlp, p, MLP_NAMES, as_float_array("h", h))


def mlp_backward(dm, cache):
    (dh,), grads = _gradients(dm, cache)
    return dh, grads


def block_forward(x, params, i, n_head):
    """Block i of the stack on x (B, T, D), causal; returns (y (B, T, D), cache)."""
    block = lambda xt, p: _block(xt, prefixed(p, f"h.{i}."), n_head)  # noqa: E731
    return _record(block, params, layer_names(i), as_float_array("x", x))


def block_backward(dy, cache):
    """Return (dx, grads) with grads keyed like block i's parameters ("h.{i}.…")."""
    (dx,), grads = _gradients(dy, cache)
    return dx, grads


# ----------------------------------------------------------------------------------------------
# The model and its language-model loss
# ----------------------------------------------------------------------------------------------


def gpt_forward(tokens, params, config):
    """logits (B, T, V) for tokens (B, T): logits[:, t] scores the token after position t, from positions ≤ t."""
    ids = _ids(check_gpt_inputs(tokens, params, config))
    return _record(lambda p: _gpt(ids, p, config), params, parameter_shapes(config))


def gpt_backward(dlogits, cache):
    """grads for every parameter, keyed and ordered like params, from dlogits (B, T, V)."""
    _, grads = _gradients(dlogits, cache)
    return grads


def _lm_loss(tokens, p, config, pad_id):
    """The mean next-token cross-entropy over the targets that are not pad_id, tokens (B, T + 1)."""
    return _cross_entropy(_gpt(tokens[:, :-1], p, config), tokens[:, 1:], 0.0, pad_id)


def gpt_loss_forward(tokens, params, config, pad_id=None):
    """The causal language-model loss of sequences tokens (B, T + 1): each position predicts the next.

    Inputs tokens[:, :−1], targets tokens[:, 1:]; the mean cross-entropy in nats over the targets
    that are not `pad_id`. Returns (loss, cache).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must have shape (B, T + 1) with T ≥ 1 (inputs and the targets shifted by one), "
                         f"got shape {tokens.shape}")
    check_gpt_inputs(tokens[:, :-1], params, config)
    ids = _ids(tokens)
    # −(1/N) Σ log softmax(logits)[target], N the number of targets that are not padding
    loss, cache = _record(lambda p: _lm_loss(ids, p, config, pad_id), params, parameter_shapes(config))
    return float(loss), cache


def gpt_loss_backward(dloss, cache):
    """grads of dloss · loss for every parameter."""
    _, grads = _gradients(np.asarray(dloss), cache)
    return grads


# ----------------------------------------------------------------------------------------------
# The GPT the Keras way: Keras layers, compute_loss, fit, and a generate loop
# ----------------------------------------------------------------------------------------------
# Keras's MultiHeadAttention keeps the heads as an axis of their own (ports/keras/attention.py):
# the query, key and value kernels are (D, H, Dh) — scratch's (D, D) W_q reshaped, column h·Dh + j
# becoming [:, h, j] — their biases (H, Dh), and the output kernel (H, Dh, D). Dense kernels are
# (in, out) as in scratch; LayerNormalization's gamma and beta are γ and β. Converting only reshapes.
# With use_causal_mask every query keeps at least itself, so Keras's masked softmax (a blocked score
# becomes a large negative number, exp of which is exactly 0) gives scratch's weights.


class GPTBlock(keras.layers.Layer):
    """One pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), with Keras's own layers."""

    def __init__(self, d_model, n_head, **kwargs):
        super().__init__(**kwargs)
        self.d_model = d_model
        dtype = self.dtype_policy
        self.ln_1 = keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype, name="ln_1")
        self.attn = keras.layers.MultiHeadAttention(n_head, d_model // n_head, dtype=dtype, name="attn")
        # MultiHeadAttention keeps 1/√Dh as a Python float, which its TensorFlow kernel casts through float32
        # (1e-8 off in float64 unless Dh is a power of 4); a NumPy scalar of the compute dtype is cast exactly.
        # (checks/test_gpt_ports.py shows the difference.)
        self.attn._inverse_sqrt_key_dim = np.asarray(1.0 / math.sqrt(d_model // n_head), self.compute_dtype)
        self.ln_2 = keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype, name="ln_2")
        self.c_fc = keras.layers.Dense(4 * d_model, dtype=dtype, name="c_fc")
        self.c_proj = keras.layers.Dense(d_model, dtype=dtype, name="c_proj")

    def build(self, input_shape):
        shape = (None, None, self.d_model)
        self.attn.build(shape, shape)
        for layer in (self.ln_1, self.ln_2, self.c_fc):
            layer.build(shape)
        self.c_proj.build((None, None, 4 * self.d_model))

    def call(self, x, training=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, use_causal_mask=True, training=training)  # (B, T, D)
        # The tanh GELU written out: keras.activations.gelu(approximate=True) is the same formula, but on
        # TensorFlow its 0.044715 is rounded to float32 first, 1e-9 off in float64 (checks/test_gpt_ports.py).
        return x + self.c_proj(_gelu(self.c_fc(self.ln_2(x))))  # (B, T, D)


class GPT(keras.Model):
    """The GPT of scratch/gpt.py from Keras layers: `model(tokens (B, T))` → logits (B, T, V).

    `compile(optimizer)`, then `fit(x=inputs, y=targets)` with inputs = sequences[:, :−1] and
    targets = sequences[:, 1:]: `compute_loss` is scratch's next-token cross-entropy, the mean over
    the targets that are not `pad_id` (None: every target counts), so fit's default train_step
    (which records the gradient on whichever backend runs) trains it. Fresh weights follow GPT-2's
    N(0, 0.02²); `to_keras_gpt` loads scratch's instead.
    """

    def __init__(self, config, pad_id=None, dtype=None, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.config, self.pad_id = config, pad_id
        d, policy = config.d_model, self.dtype_policy
        normal = keras.initializers.RandomNormal(stddev=0.02)
        self.wte = keras.layers.Embedding(config.vocab_size, d, embeddings_initializer=normal, dtype=policy, name="wte")
        self.wpe = keras.layers.Embedding(config.block_size, d, embeddings_initializer=normal, dtype=policy, name="wpe")
        self.blocks = [GPTBlock(d, config.n_head, dtype=policy, name=f"h_{i}") for i in range(config.n_layer)]
        self.ln_f = keras.layers.LayerNormalization(epsilon=1e-5, dtype=policy, name="ln_f")
        self(np.zeros((1, 1), np.int64))  # build every weight now, so that converters can assign them

    def call(self, tokens, training=None):
        x = self.wte(tokens) + self.wpe(ops.arange(ops.shape(tokens)[1]))  # (B, T, D)
        for block in self.blocks:
            x = block(x, training=training)
        # the output layer is the token embedding, transposed (tied): one weight, two uses
        return ops.matmul(self.ln_f(x), ops.transpose(self.wte.embeddings))  # (B, T, V)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return _cross_entropy(y_pred, y, 0.0, self.pad_id)

    def generate(self, prompt, max_new_tokens, rng, temperature=1.0, top_k=None, top_p=None):
        """scratch's generate(use_cache=False) with this model: prompt (B, T₀) → prompt and the drawn tokens.

        Keras's MultiHeadAttention keeps no key/value cache, so each step runs the model on the whole
        sequence again. Each token is `sample(logits of the last position, rng, …)`, one uniform number
        per row from the NumPy generator, as scratch draws; generation stops at block_size + 1 tokens.
        """
        seq = np.asarray(prompt)
        if seq.ndim != 2 or not 1 <= seq.shape[1] <= self.config.block_size:
            raise ValueError(f"prompt must have shape (B, T₀) with 1 ≤ T₀ ≤ block_size = {self.config.block_size}, "
                             f"got shape {seq.shape}")
        for _ in range(min(int(max_new_tokens), self.config.block_size + 1 - seq.shape[1])):
            logits = ops.convert_to_numpy(self(seq, training=False))[:, -1]  # (B, V)
            nxt = sample(logits, rng, temperature, top_k, top_p)  # (B,)
            seq = np.concatenate([seq, nxt[:, None].astype(seq.dtype)], axis=1)
        return seq


def _keras_weights(model):
    """{scratch name: (Keras variable, its shape in Keras)} for every parameter of parameter_shapes."""
    weights = {"wte": model.wte.embeddings, "wpe": model.wpe.embeddings}
    for i, block in enumerate(model.blocks):
        p = f"h.{i}."
        weights[p + "ln_1.gamma"], weights[p + "ln_1.beta"] = block.ln_1.gamma, block.ln_1.beta
        mha = block.attn
        for which, dense in zip("qkvo", (mha.query_dense, mha.key_dense, mha.value_dense, mha.output_dense)):
            weights[f"{p}attn.W_{which}"], weights[f"{p}attn.b_{which}"] = dense.kernel, dense.bias
        weights[p + "ln_2.gamma"], weights[p + "ln_2.beta"] = block.ln_2.gamma, block.ln_2.beta
        weights[p + "mlp.W1"], weights[p + "mlp.b1"] = block.c_fc.kernel, block.c_fc.bias
        weights[p + "mlp.W2"], weights[p + "mlp.b2"] = block.c_proj.kernel, block.c_proj.bias
    weights["ln_f.gamma"], weights["ln_f.beta"] = model.ln_f.gamma, model.ln_f.beta
    return weights


def to_keras_gpt(params, config, pad_id=None):
    """A `GPT` keras.Model holding copies of a scratch parameter dict (its dtype is theirs)."""
    check_gpt_inputs(np.zeros((0, 1), np.int64), params, config)
    model = GPT(config, pad_id=pad_id, dtype=np.asarray(params["wte"]).dtype.name)
    for name, variable in _keras_weights(model).items():
        variable.assign(np.reshape(params[name], variable.shape))
    return model


def from_keras_gpt(model):
    """The scratch parameter dict of a `GPT`, in parameter_shapes order (the inverse of the above)."""
    weights = _keras_weights(model)
    return {name: np.array(weights[name].numpy()).reshape(shape) for name, shape in parameter_shapes(model.config).items()}
