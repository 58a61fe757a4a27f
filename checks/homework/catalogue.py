"""Classic student bugs, each one small edit of the reference, for testing the grader.

Every bug names the function that must lose its point, and the edit: a regular expression that
must match exactly once in the reference module (so a change to scratch/ that moves the line
breaks the catalogue loudly instead of silently testing nothing), or a whole replacement of
the function's solution block. `apply` writes a copy of the reference with the bug in it.
"""

import re
import shutil
from pathlib import Path
from typing import NamedTuple

from checks.homework import markers

REPO = Path(__file__).resolve().parents[2]


class Bug(NamedTuple):
    name: str
    module: str
    function: str  # the task that must score 0
    pattern: str  # regex matched once in scratch/<module>.py; "" with `block` set
    replacement: str  # for `pattern`; or the whole new solution block, 4-space relative indent
    expect: str  # a phrase the feedback must contain: the message must point at the bug


_MHA_HEADS_ASSIGN = """\
dheads, grads["W_o"], grads["b_o"] = linear_backward(dout, LinearCache(heads, params["W_o"]))
dq, dk, dv = scaled_dot_product_attention_backward(split_heads(dheads, num_heads), attention_cache)
dq, dk, dv = merge_heads(dq), merge_heads(dk), merge_heads(dv)
d = x_q.shape[-1]
width = d // num_heads
for name, x, g in (("q", x_q, dq), ("k", x_kv, dk), ("v", x_kv, dv)):
    grads["W_" + name] = x.reshape(-1, d).T @ g.reshape(-1, d)
    grads["b_" + name] = g.reshape(-1, d).sum(axis=0)
dx_q, dx_kv = np.zeros_like(x_q), np.zeros_like(x_kv)
for h in range(num_heads):
    cols = slice(h * width, (h + 1) * width)
    dx_q = dq[..., cols] @ params["W_q"][:, cols].T  # the bug: = where += belongs
    dx_kv += dk[..., cols] @ params["W_k"][:, cols].T + dv[..., cols] @ params["W_v"][:, cols].T
"""

# flash_attention_forward with the log-sum-exp taken at the top of each key block's step, so what is left after
# the loop is m and ℓ before the last block: the output is right, the backward's L_i is not.
_FLASH_LSE_BEFORE_THE_LAST_BLOCK = """\
q_t = transposed(q * scale)
for r0 in range(0, tq, block_q):
    r1 = min(r0 + block_q, tq)
    q_i = q_t[..., r0:r1]
    m_i = np.full((*lead, r1 - r0), -np.inf, dtype=q.dtype)
    l_i = np.zeros((*lead, r1 - r0), dtype=q.dtype)
    o_i = np.zeros((*lead, r1 - r0, dv), dtype=q.dtype)
    for j in range(key_blocks_seen(r1, tk, block_k, causal)):
        with np.errstate(divide="ignore"):
            lse[..., r0:r1] = m_i + np.log(l_i)  # the bug: saved before this block is added
        c0, c1 = j * block_k, min((j + 1) * block_k, tk)
        s_t = k[..., c0:c1, :] @ q_i
        if causal and c1 - 1 > r0:
            np.copyto(s_t, -np.inf, where=~causal_block_mask(r0, r1, c0, c1).T)
        m_new = np.maximum(m_i, s_t.max(axis=-2))
        p_t = np.exp(s_t - m_new[..., None, :])
        alpha = np.exp(m_i - m_new)
        l_i = alpha * l_i + p_t.sum(axis=-2)
        o_i = alpha[..., None] * o_i + p_t.swapaxes(-1, -2) @ v[..., c0:c1, :]
        m_i = m_new
    out[..., r0:r1, :] = o_i / l_i[..., None]
"""

# ddpm_step as Algorithm 2 writes it, with ᾱ_{t−1} = ᾱ[t − 1] unguarded: at t = 0 that is ᾱ[−1], the last ᾱ, so
# σ_0² = (1 − ᾱ_{T−1}) / (1 − ᾱ_0) · β_0 is not 0 and noise is added to the final sample. Every t > 0 is right.
_DDPM_NOISE_AT_T0 = """\
a = np.cumprod(1.0 - betas)  # (T,)
a_t, beta_t = a[t], betas[t]  # (B,) each
mean = (x_t - _per_example(beta_t / np.sqrt(1.0 - a_t), x_t) * eps_pred) / _per_example(np.sqrt(1.0 - beta_t), x_t)
if noise is None:
    return mean
variance = (1.0 - a[t - 1]) / (1.0 - a_t) * beta_t  # the bug: ᾱ[−1] at t = 0, where ᾱ_{−1} = 1 belongs
x_prev = mean + _per_example(np.sqrt(variance), x_t) * noise  # (B, ...)
"""

BUGS = [
    Bug("softmax without the max shift", "attention", "softmax_forward",
        r"e = x - m  #", "e = x.copy()  #", "holds"),
    Bug("softmax backward without the Σ dout·y term", "attention", "softmax_backward",
        r"dx = dout - np\.vecdot\(dout, y, axis=axis, keepdims=True\)", "dx = dout.copy()", "largest error"),
    Bug("causal mask off by one (strictly below the diagonal)", "attention", "causal_mask",
        r"np\.tril\(np\.ones\(\(t, t\), dtype=bool\)\)", "np.tril(np.ones((t, t), dtype=bool), k=-1)", "differs"),
    Bug("padding mask off by one (keys j ≤ length)", "attention", "padding_mask",
        r"np\.arange\(t_k\)\[None, :\] < lengths", "np.arange(t_k)[None, :] <= lengths", "differs"),
    Bug("attention without 1/√d_k", "attention", "scaled_dot_product_attention_forward",
        r"scores \*= scale", "pass  # the scale is forgotten", "largest error"),
    Bug("mask applied after the softmax", "attention", "scaled_dot_product_attention_forward",
        r"weights, softmax_cache = softmax_forward\(scores, axis=-1, mask=mask\)",
        "weights, softmax_cache = softmax_forward(scores, axis=-1)\n"
        "    if mask is not None:\n        weights = weights * mask  # rows no longer sum to 1", "largest error"),
    Bug("transposed key in the backward", "attention", "scaled_dot_product_attention_backward",
        r"dq = dscores @ k  #", "dq = dscores @ k.swapaxes(-1, -2)  #", "smallest failing input"),
    Bug("missing padding mask in multi-head attention", "attention", "multi_head_attention_forward",
        r"head_mask = None if mask is None else mask\[\.\.\., None, :, :\]", "head_mask = None", "largest error"),
    Bug("gradient accumulated with = instead of += across heads", "attention", "multi_head_attention_backward",
        "", _MHA_HEADS_ASSIGN, "dx_q differs"),
    Bug("dW without flattening the leading axes", "layers", "linear_backward",
        r"dW = x\.reshape\(-1, x\.shape\[-1\]\)\.T @ dout\.reshape\(-1, dout\.shape\[-1\]\)", "dW = x.T @ dout",
        "smallest failing input"),
    Bug("relu gradient 1 at x = 0", "layers", "relu_backward", r"dout \* \(x > 0\)", "dout * (x >= 0)", "dx differs"),
    Bug("leaky relu backward drops the maximum's result (no out=): relu's zero slope on the negative side", "layers",
        "leaky_relu_backward", r"np\.maximum\(local, negative_slope, out=local\)", "np.maximum(local, negative_slope)",
        "dx differs"),
    Bug("tanh backward without the square", "layers", "tanh_backward", r"1\.0 - y \* y", "1.0 - y", "dx differs"),
    Bug("sigmoid backward with 1 + σ", "layers", "sigmoid_backward", r"y \* \(1\.0 - y\)", "y * (1.0 + y)", "dx differs"),
    Bug("σ used where σ² belongs in the reparameterisation", "vae", "reparameterize_forward",
        r"std = np\.exp\(0\.5 \* log_var\)", "std = np.exp(log_var)", "z differs"),
    Bug("reparameterisation backward without the ½", "vae", "reparameterize_backward",
        r"dlog_var = dz \* 0\.5 \* std \* eps", "dlog_var = dz * std * eps", "dlog_var differs"),
    Bug("KL with the wrong sign", "vae", "gaussian_kl_forward", r"kl = 0\.5 \* np\.sum", "kl = -0.5 * np.sum", "kl differs"),
    Bug("KL without the ½", "vae", "gaussian_kl_forward", r"kl = 0\.5 \* np\.sum", "kl = np.sum", "kl differs"),
    Bug("KL computed in float64 whatever the input (np.float64 constant)", "vae", "gaussian_kl_forward",
        r"kl = 0\.5 \* np\.sum", "kl = np.float64(0.5) * np.sum", "dtype in must equal dtype out"),
    Bug("KL backward without the −1", "vae", "gaussian_kl_backward",
        r"0\.5 \* \(var - 1\.0\)", "0.5 * var", "dlog_var differs"),
    Bug("Bernoulli log-likelihood through log σ(l) (log 0 for large logits)", "vae", "bernoulli_log_likelihood_forward",
        r"log_likelihood = np\.sum\(x \* logits - _?softplus\(logits\), axis=-1\)",
        "p = 1.0 / (1.0 + np.exp(-logits))\n    log_likelihood = np.sum(x * np.log(p) + (1.0 - x) * np.log(1.0 - p), axis=-1)",
        "log_likelihood"),
    Bug("broadcast log-variance gradient not summed back", "vae", "gaussian_log_likelihood_backward",
        r"dlog_var = _sum_to_shape\(dll \* 0\.5 \* \(residual \* residual \* inv_var - 1\.0\), log_var_shape\)",
        "dlog_var = dll * 0.5 * (residual * residual * inv_var - 1.0)", "shape"),
    Bug("ELBO with the KL added", "vae", "vae_forward", r"elbo = reconstruction - kl", "elbo = reconstruction + kl",
        "differs"),
    Bug("minimax and non-saturating generator losses swapped", "gan", "generator_loss_forward",
        r'if kind == "minimax":(?=\s+loss = -np\.mean)', 'if kind == "non_saturating":', "loss differs"),
    Bug("discriminator loss backward divides by the total count", "gan", "discriminator_loss_backward",
        r"\(-dloss / real_logits\.size\)", "(-dloss / (real_logits.size + fake_logits.size))", "d_real_logits differs"),
    Bug("optimal discriminator computes 0/0 where both densities vanish", "gan", "optimal_discriminator",
        r"np\.where\(total > 0, p_data / safe, 0\.5\)", "p_data / total", "holds nan"),
    Bug("encoder gradient without the KL's share", "vae", "vae_backward",
        r"encode_backward\(dmu \+ dmu_kl, dlog_var \+ dlog_var_kl,", "encode_backward(dmu, dlog_var,", "differs"),
    Bug("embedding backward with fancy-index += (a repeated id counted once)", "layers", "embedding_backward",
        r"np\.add\.at\(dtable, ids\.reshape\(-1\), dout\.reshape\(-1, shape\[1\]\)\)",
        "dtable[ids.reshape(-1)] += dout.reshape(-1, shape[1])", "dtable differs"),
    Bug("positional encoding with sin and cos swapped", "transformer", "positional_encoding",
        r"pe\[:, 0::2\] = np\.sin\(angle\)[^\n]*\n\s*pe\[:, 1::2\] = np\.cos\(angle\[:, : d_model // 2\]\)",
        "pe[:, 0::2] = np.cos(angle)\n    pe[:, 1::2] = np.sin(angle[:, : d_model // 2])", "pe differs"),
    Bug("positional encoding frequency 1/10000^(i/d) where 2i/d belongs", "transformer", "positional_encoding",
        r"two_i = np\.arange\(0, d_model, 2, dtype=np\.float64\)", "two_i = np.arange((d_model + 1) // 2, dtype=np.float64)",
        "pe differs"),
    Bug("layer norm with the unbiased variance (divides by D − 1)", "transformer", "layer_norm_forward",
        r"var = \(centred \* centred\)\.mean\(axis=-1, keepdims=True\)", "var = x.var(axis=-1, ddof=1, keepdims=True)",
        "y holds nan"),
    Bug("layer norm with ε outside the square root", "transformer", "layer_norm_forward",
        r"inv_std = 1\.0 / np\.sqrt\(var \+ eps\)", "inv_std = 1.0 / (np.sqrt(var) + eps)", "y differs"),
    Bug("layer norm backward without the x̂ · mean(dx̂ ⊙ x̂) term", "transformer", "layer_norm_backward",
        r"dx -= x_hat \* \(dx_hat \* x_hat\)\.mean\(axis=-1, keepdims=True\)", "pass  # the σ term is forgotten",
        "dx differs"),
    Bug("pre-norm residual added to the normalised input (h + f(h), not x + f(h))", "transformer", "encoder_layer_forward",
        r"y = x \+ f  # \(B, T, D\)", "y = h + f  # (B, T, D)", "y differs"),
    Bug("pre-norm sub-layer backward drops the residual path (dx = LN'ᵀ f'ᵀ dout only)", "transformer",
        "encoder_layer_backward", r"dx = dout \+ dx_norm", "dx = dx_norm", "dx differs"),
    Bug("decoder layer backward drops the cross-attention's gradient to memory", "transformer", "decoder_layer_backward",
        r"return dq, \(dmemory, g\)", "return dq, (np.zeros_like(dmemory), g)", "dmemory differs"),
    Bug("label smoothing spread over the V − 1 other classes (ε/(V − 1), not ε/V)", "transformer", "cross_entropy_forward",
        r"- eps \* log_probs\.mean\(axis=-1\)",
        "- eps * (log_probs.sum(axis=-1) - log_probs[np.arange(len(t)), t]) / (v - 1)", "loss holds nan"),
    Bug("cross-entropy mean over every position, padding included", "transformer", "cross_entropy_forward",
        r"weight = counted\.reshape\(-1, 1\)\.astype\(z\.dtype\) / max\(n, 1\)",
        "weight = np.ones((len(t), 1), z.dtype) / len(t)", "loss differs"),
    Bug("decoder step ignores its key/value cache (attends to the newest position only)", "decoding", "decoder_step",
        r'if layer\["self_k"\] is not None:', "if False:", "logits differs"),
    # Stateful: graded over sequences of calls (tasks.Steps), so a step that forgets its state loses
    # the point at the next call even though every single call, on the reference's state, is right.
    Bug("decoder step never stores the new key and value (attends correctly, the cache never grows)", "decoding",
        "decoder_step", r'layer\["self_k"\], layer\["self_v"\] = k, v', "pass  # the cache is left as it was",
        "step 1 matched"),
    Bug("Adam without bias correction (m̂ = m, v̂ = v)", "optim", "adam_step",
        r"m_hat = m / \(1\.0 - beta1\*\*t\)  # \(P\)\n\s*# v̂_t = v_t / \(1 − β2\^t\)\n\s*v_hat = v / \(1\.0 - beta2\*\*t\)",
        "m_hat = m  # (P)\n            v_hat = v  # (P)", "step 1: params"),
    Bug("Adam's bias correction with the step count off by one (1 − β^(t+1))", "optim", "adam_step",
        r"m_hat = m / \(1\.0 - beta1\*\*t\)  # \(P\)\n\s*# v̂_t = v_t / \(1 − β2\^t\)\n\s*v_hat = v / \(1\.0 - beta2\*\*t\)",
        "m_hat = m / (1.0 - beta1 ** (t + 1))  # (P)\n            v_hat = v / (1.0 - beta2 ** (t + 1))  # (P)",
        "step 1: params"),
    Bug("Adam's first moment rebound (m = β1·m + …), not updated in place: the state m never moves", "optim",
        "adam_step", r"m \*= beta1\n\s*m \+= \(1\.0 - beta1\) \* g  # \(P\)", "m = beta1 * m + (1.0 - beta1) * g  # (P)",
        "step 1: state_dict.m."),
    Bug("SGD's momentum buffer not kept between steps (b = μ·b + g makes a new array)", "optim", "sgd_step",
        r"b \*= self\.momentum\n\s*b \+= g  # \(P\)", "b = self.momentum * b + g  # (P)",
        "step 1: state_dict.momentum_buffer."),
    Bug("SGD momentum applied as dampening (b = μ·b + (1 − μ)·g)", "optim", "sgd_step",
        r"b \+= g  # \(P\)", "b += (1.0 - self.momentum) * g  # (P)", "step 1: params"),
    Bug("warm-up peak at the wrong step (step · warmup^−0.5: the two terms meet at warmup^⅓)", "optim",
        "transformer_schedule", r"step \* warmup\*\*-1\.5", "step * warmup**-0.5", "lr differs"),
    Bug("warm-up counted from step 0 (the rate is 0 at step 1)", "optim", "transformer_schedule",
        r"min\(step\*\*-0\.5, step \* warmup", "min(step**-0.5, (step - 1) * warmup", "call 1: lr differs"),
    # conv (scratch/conv.py) and batch norm (scratch/layers.py)
    Bug("conv2d with the kernel flipped (a true convolution, not torch's cross-correlation)", "conv", "conv2d_forward",
        r"w_cols = w\.transpose\(2, 3, 1, 0\)\.reshape\(-1, c_out\)",
        "w_cols = w[:, :, ::-1, ::-1].transpose(2, 3, 1, 0).reshape(-1, c_out)", "out differs"),
    Bug("conv2d padded on one side only (all 2p rows and columns at the top and left)", "conv", "conv2d_forward",
        r"\(\(0, 0\), \(ph, ph\), \(pw, pw\), \(0, 0\)\)\)  # \(B, Hp, Wp, C_in\)",
        "((0, 0), (2 * ph, 0), (2 * pw, 0), (0, 0)))  # (B, Hp, Wp, C_in)", "out differs"),
    Bug("conv2d ignores the dilation when it gathers the patches", "conv", "conv2d_forward",
        r"cols = im2col\(xp, \(kh, kw\), stride, dilation, \(ho, wo\)\)", "cols = im2col(xp, (kh, kw), stride, (1, 1), (ho, wo))",
        "out differs"),
    Bug("conv2d backward ignores the stride (patches added back one cell apart)", "conv", "conv2d_backward",
        r"\(kh, kw\), stride, dilation, \(ho, wo\)\)  # \(B, Hp, Wp, C_in\)", "(kh, kw), (1, 1), dilation, (ho, wo))",
        "dx differs"),
    Bug("conv2d bias gradient summed over the wrong axes (per image, not per channel)", "conv", "conv2d_backward",
        r"db = dout\.sum\(axis=\(0, 2, 3\)\) if has_bias else None  # \(C_out,\)\n",
        "db = dout.sum(axis=(1, 2, 3)) if has_bias else None\n", "db has shape"),
    Bug("transposed conv output size without output_padding", "conv", "conv_transpose2d_forward",
        r"\+ dh \* \(kh - 1\) \+ oph \+ 1, \(wd - 1\) \* sw - 2 \* pw \+ dw \* \(kw - 1\) \+ opw \+ 1",
        "+ dh * (kh - 1) + 1, (wd - 1) * sw - 2 * pw + dw * (kw - 1) + 1", "out has shape"),
    Bug("transposed conv backward gathers from dout without its padding", "conv", "conv_transpose2d_backward",
        r"doutp = np\.pad\(dout\.transpose\(0, 2, 3, 1\), \(\(0, 0\), \(ph, ph\), \(pw, pw\), \(0, 0\)\)\)",
        "doutp = np.ascontiguousarray(dout.transpose(0, 2, 3, 1))", "raised ValueError"),
    Bug("batch norm with ε outside the square root", "layers", "batch_norm_forward",
        r"inv_std = 1\.0 / np\.sqrt\(var \+ eps\)", "inv_std = 1.0 / (np.sqrt(var) + eps)", "y differs"),
    Bug("batch norm backward without the mean terms (μ and σ² taken as constants)", "layers", "batch_norm_backward",
        r"dx = dx_hat - dx_hat\.mean\(axis=axes, keepdims=True\) - x_hat \* \(dx_hat \* x_hat\)\.mean\(axis=axes, keepdims=True\)",
        "dx = dx_hat.copy()", "dx differs"),
    Bug("running variance biased (σ² where PyTorch keeps σ² · N / (N − 1))", "layers", "batch_norm_update_running",
        r"unbiased = cache\.var \* \(cache\.count / \(cache\.count - 1\.0\)\)", "unbiased = cache.var", "running_var differs"),
    Bug("batch norm eval divides by the running variance, not its square root", "layers", "batch_norm_eval",
        r"scale = gamma / np\.sqrt\(running_var \+ eps\)", "scale = gamma / (running_var + eps)", "y differs"),
    # flash (scratch/flash_attention.py)
    Bug("flash forward: the output not rescaled when the running maximum grows", "flash_attention",
        "flash_attention_forward", r"o_i \*= alpha\[\.\.\., None\]", "pass  # the bug: Õ stays against the old maximum",
        "out differs"),
    Bug("flash forward: the log-sum-exp saved before the last key block", "flash_attention", "flash_attention_forward",
        "", _FLASH_LSE_BEFORE_THE_LAST_BLOCK, "lse"),
    Bug("flash backward: D = rowsum(dO) instead of rowsum(dO ∘ O)", "flash_attention", "flash_attention_backward",
        r"d = np\.vecdot\(dout, out\)", "d = dout.sum(axis=-1)", "differs"),
    Bug("flash forward: causal key blocks skipped one too many (the diagonal block never read)", "flash_attention",
        "flash_attention_forward", r"for j in range\(key_blocks_seen\(r1, tk, block_k, causal\)\):",
        "for j in range(key_blocks_seen(r1, tk, block_k, causal) - int(causal)):", "out"),
    # metrics (scratch/metrics.py)
    Bug("Fréchet distance with biased covariances (divided by N, not N − 1)", "metrics", "frechet_distance",
        r"cov_a = centred_a\.T @ centred_a / \(len\(a\) - 1\)  # \(d, d\)\n    cov_b = centred_b\.T @ centred_b / \(len\(b\) - 1\)",
        "cov_a = centred_a.T @ centred_a / len(a)  # the bug: N\n    cov_b = centred_b.T @ centred_b / len(b)", "fid differs"),
    Bug("Fréchet distance with the square root of Σ_a Σ_b taken elementwise", "metrics", "frechet_distance",
        r"trace_sqrt = np\.sqrt\(np\.clip\(lam, 0\.0, None\)\)\.sum\(\)",
        "trace_sqrt = np.trace(np.sqrt(np.abs(cov_a @ cov_b)))  # the bug: entry by entry, not the matrix root",
        "fid differs"),
    Bug("kernel distance with the diagonal kept (the biased MMD², k(x, x) counted)", "metrics", "kernel_distance",
        r"within_a = \(k_aa\.sum\(\) - np\.trace\(k_aa\)\) / \(n \* \(n - 1\)\)\n    within_b = \(k_bb\.sum\(\) - np\.trace\(k_bb\)\) / \(m \* \(m - 1\)\)",
        "within_a = k_aa.mean()  # the bug: i = j included\n    within_b = k_bb.mean()", "kid differs"),
    Bug("precision/recall with each sample its own nearest neighbour (the radius one neighbour short)", "metrics",
        "precision_recall", r"    np\.fill_diagonal\(dist, np\.inf\)  # exclude the point itself\n", "", "differs"),
    # gpt (scratch/gpt.py), its sampling (scratch/sampling.py) and GELU (scratch/layers.py)
    Bug("GELU backward without tanh' (d tanh(u)/du = 1 − t² left out)", "layers", "gelu_backward",
        r"0\.5 \* x \* \(1\.0 - t \* t\) \* du", "0.5 * x * du", "dx differs"),
    Bug("GPT block without the MLP's residual (y = mlp(ln_2(x₁)), not x₁ + mlp(ln_2(x₁)))", "gpt", "block_forward",
        r"y = x1 \+ m  # \(B, T, D\)", "y = m  # (B, T, D)", "y differs"),
    Bug("GPT block backward drops the attention's residual path (dx = LN_1'ᵀ attn'ᵀ dx₁ only)", "gpt", "block_backward",
        r"dx = dx1 \+ dx_norm  # \(B, T, D\)", "dx = dx_norm  # (B, T, D)", "dx differs"),
    Bug("top-k keeps exactly k tokens (torch.topk's way: the others tied with the k-th dropped)", "sampling",
        "filter_logits", r"out\[out < kth\] = -np\.inf",
        "drop = np.argsort(-out, axis=-1, kind=\"stable\")[..., top_k:]  # the bug: a tie at the k-th keeps one member\n"
        "        np.put_along_axis(out, drop, -np.inf, axis=-1)", "logits differs"),
    Bug("top-k keeps what is strictly above the k-th largest (> where ≥ belongs)", "sampling", "filter_logits",
        r"out\[out < kth\] = -np\.inf", "out[out <= kth] = -np.inf", "logits differs"),
    Bug("top-p removes the token that crosses p (keeps only what stays below p)", "sampling", "filter_logits",
        r"remove_sorted = np\.cumsum\(probs, axis=-1\) <= 1\.0 - top_p",
        "remove_sorted = np.cumsum(probs, axis=-1) - probs <= 1.0 - top_p", "logits differs"),
    Bug("temperature applied after the softmax (p / τ, which the draw's normalisation undoes)", "sampling", "sample",
        r"z = filter_logits\(logits / float\(temperature\), top_k, top_p\)  # \(\.\.\., V\)\n"
        r"\s*probs, _ = softmax_forward\(z\)",
        "z = filter_logits(logits, top_k, top_p)\n    probs = softmax_forward(z)[0] / float(temperature)  # the bug",
        "tokens differs"),
    # Stateful: gpt_step is pure and hands back its cache, which the grader feeds to the next call.
    Bug("cached step never appends to the cache (attends over the new key and value, returns the old cache)", "gpt",
        "gpt_step", r"keys\.append\(k\)\n\s*values\.append\(v\)",
        "keys.append(kv.keys[i])  # the bug\n        values.append(kv.values[i])", "step 1 matched"),
    Bug("cached step embeds every new token at position 0 (the position never advances)", "gpt", "gpt_step",
        r"params\[\"wpe\"\]\[t\]", "params[\"wpe\"][0]", "logits differs"),
    # diffusion (scratch/diffusion.py) and the guidance mix (scratch/unet.py)
    Bug("diffusion: q_sample with 1 − ᾱ_t where √(1 − ᾱ_t) belongs (the noise's variance taken for its scale)", "diffusion", "q_sample",
        r"_per_example\(np\.sqrt\(1\.0 - a\), x0\)", "_per_example(1.0 - a, x0)", "x_t differs"),
    Bug("diffusion: q_sample with ᾱ indexed at t + 1 (the paper's 1-based t read into a 0-based array)", "diffusion", "q_sample",
        r"a = alphas_cumprod\[t\]  # \(B,\)", "a = alphas_cumprod[t + 1]  # (B,)", "raised IndexError"),
    Bug("diffusion: ε loss backward without the 2 of d(ε̂ − ε)²", "diffusion", "eps_loss_backward",
        r"diff \* \(2\.0 \* float\(dloss\) / diff\.size\)", "diff * (float(dloss) / diff.size)", "deps_pred differs"),
    Bug("diffusion: DDPM step adds noise at t = 0 (ᾱ_{t−1} read as ᾱ[t − 1], the last ᾱ at t = 0, where ᾱ_{−1} = 1 and σ_0 = 0)",
        "diffusion", "ddpm_step", "", _DDPM_NOISE_AT_T0, "x_prev differs"),
    Bug("diffusion: DDPM step with σ_t² = β_t where the contract's β̃_t belongs (diffusers' fixed_large, not fixed_small)",
        "diffusion", "ddpm_step", r"sigma = np\.where\(t > 0, np\.sqrt\(variance\), 0\.0\)",
        "sigma = np.where(t > 0, np.sqrt(betas[t]), 0.0)", "x_prev differs"),
    Bug("diffusion: DDIM step at the end (t_prev < 0) reads ᾱ[t_prev], the last ᾱ, where ᾱ = 1 belongs", "diffusion", "ddim_step",
        r"a_prev = np\.where\(t_prev >= 0, alphas_cumprod\[np\.maximum\(t_prev, 0\)\], 1\.0\)  # \(B,\)",
        "a_prev = alphas_cumprod[t_prev]  # (B,)", "x_prev"),  # differs, or NaN: ᾱ_prev < ᾱ_t makes σ² < 0
    Bug("diffusion: DDIM's σ² with η where η² belongs (Eq. 16)", "diffusion", "ddim_step", r"var = eta \* eta \* ", "var = eta * ",
        "x_prev differs"),
    Bug("diffusion: classifier-free guidance with the sign reversed (away from the word, towards ∅)", "unet", "guidance_mix",
        r"return \(1\.0 - scale\) \* eps_uncond \+ scale \* eps_cond", "return (1.0 + scale) * eps_uncond - scale * eps_cond",
        "eps differs"),
    # dcgan (scratch/dcgan.py); its task names carry "dcgan_": gan.py has functions of the same names
    Bug("DCGAN generator in evaluation mode normalises by the batch's statistics (train mode left on), not the running ones",
        "dcgan", "dcgan_generator_forward", r'_batch_norm\(h, params, "gen\.bn2", stats\)',
        '_batch_norm(h, params, "gen.bn2", None)', "x differs"),
    Bug("DCGAN generator's first transposed convolution with stride 1 (7×7 → 9×9, not 14×14)", "dcgan", "dcgan_generator_forward",
        r'conv_transpose2d_forward\(h, params\["gen\.W2"\], None, stride=2, padding=1\)',
        'conv_transpose2d_forward(h, params["gen.W2"], None, stride=1, padding=1)', "x has shape"),
    Bug("DCGAN generator backward skips the first ReLU's gate", "dcgan", "dcgan_generator_backward",
        r'dh = relu_backward\(dh, layers\["relu1"\]\)', "pass  # the bug: dh goes through ReLU's gate untouched", "differs"),
    Bug("DCGAN discriminator with leaky ReLU's default slope 0.01 where config.slope belongs", "dcgan",
        "dcgan_discriminator_forward", r"leaky_relu_forward\(h, slope\)  # \(B, 2d, 7, 7\)",
        "leaky_relu_forward(h)  # (B, 2d, 7, 7)", "logits differs"),
    Bug("DCGAN discriminator backward loses leaky ReLU's slope (a ReLU's gradient, 0 on the negative side)", "dcgan",
        "dcgan_discriminator_backward", r'dh = leaky_relu_backward\(dh, layers\["lrelu1"\]\)',
        'dh = relu_backward(dh, layers["lrelu1"][0])', "differs"),
]


def edit(source, bug):
    """The module's source with the bug in it; raises if the anchor is gone or ambiguous."""
    if bug.pattern:
        new, count = re.subn(bug.pattern, lambda _: bug.replacement, source)
        if count != 1:
            raise ValueError(f"bug {bug.name!r}: pattern {bug.pattern!r} matches {count} times in scratch/{bug.module}.py")
        return new
    block = next(b for b in markers.blocks(source) if b.function == bug.function)
    lines = source.splitlines(keepends=True)
    body = "".join(f"{block.indent}{line}\n" if line else "\n" for line in bug.replacement.splitlines())
    return "".join(lines[: block.begin] + [body] + lines[block.end + 1:])


def apply(bug, folder):
    """Write a submission into `folder`: the reference scratch/ with `bug` applied."""
    folder = Path(folder)
    shutil.copytree(REPO / "scratch", folder / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    path = folder / "scratch" / f"{bug.module}.py"
    path.write_text(edit(path.read_text(), bug))
    return folder
