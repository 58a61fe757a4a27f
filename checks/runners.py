"""Run one op's forward and backward on any implementation; collect every result by name.

Each runner returns a dict {"out": …, "d<input>": …}, so that a check compares two
implementations name by name and a failure says which output or gradient disagrees.
"""

import numpy as np


def run_softmax(module, case):
    out, cache = module.softmax_forward(case.x, case.axis, case.mask)
    return {"out": out, "dx": module.softmax_backward(case.dout, cache)}


def run_attention(module, case):
    out, cache = module.scaled_dot_product_attention_forward(case.q, case.k, case.v, case.mask)
    dq, dk, dv = module.scaled_dot_product_attention_backward(case.dout, cache)
    return {"out": out, "dq": dq, "dk": dk, "dv": dv}


def run_multi_head(module, case):
    out, cache = module.multi_head_attention_forward(case.x_q, case.x_kv, case.params, case.num_heads, case.mask)
    dx_q, dx_kv, grads = module.multi_head_attention_backward(case.dout, cache)
    return {"out": out, "dx_q": dx_q, "dx_kv": dx_kv, **{f"d{name}": g for name, g in grads.items()}}


RUNNERS = {"softmax": run_softmax, "attention": run_attention, "multi_head": run_multi_head}


# ----------------------------------------------------------------------------------------------
# The VAE (scratch/vae.py)
# ----------------------------------------------------------------------------------------------


def run_reparameterize(module, case):
    z, cache = module.reparameterize_forward(case.mu, case.log_var, case.eps)
    dmu, dlog_var = module.reparameterize_backward(case.dz, cache)
    return {"z": z, "dmu": dmu, "dlog_var": dlog_var}


def run_gaussian_kl(module, case):
    kl, cache = module.gaussian_kl_forward(case.mu, case.log_var)
    dmu, dlog_var = module.gaussian_kl_backward(case.dkl, cache)
    return {"kl": kl, "dmu": dmu, "dlog_var": dlog_var}


def run_bernoulli_log_likelihood(module, case):
    log_likelihood, cache = module.bernoulli_log_likelihood_forward(case.x, case.decoded)
    return {"log_likelihood": log_likelihood, "dlogits": module.bernoulli_log_likelihood_backward(case.dll, cache)}


def run_gaussian_log_likelihood(module, case):
    log_likelihood, cache = module.gaussian_log_likelihood_forward(case.x, case.decoded, case.log_var)
    dmean, dlog_var = module.gaussian_log_likelihood_backward(case.dll, cache)
    return {"log_likelihood": log_likelihood, "dmean": dmean, "dlog_var": dlog_var}


def run_vae(module, case):
    """The loss (a Python float, as a scalar of the model's dtype, which holds it exactly), every
    other VAEOutput field, and every gradient."""
    output, cache = module.vae_forward(case.x, case.params, case.eps, case.config)
    grads = module.vae_backward(case.dloss, cache)
    terms = {name: value for name, value in output._asdict().items() if name != "loss"}
    return {"loss": output.elbo.dtype.type(output.loss), **terms, **{f"d{name}": g for name, g in grads.items()}}


RUNNERS.update({
    "reparameterize": run_reparameterize,
    "gaussian_kl": run_gaussian_kl,
    "bernoulli_log_likelihood": run_bernoulli_log_likelihood,
    "gaussian_log_likelihood": run_gaussian_log_likelihood,
    "vae": run_vae,
})


# ----------------------------------------------------------------------------------------------
# The GAN (scratch/gan.py)
# ----------------------------------------------------------------------------------------------


def _scalar(value, dtype):
    """A loss (a Python float) as a scalar of the inputs' dtype, which holds it exactly."""
    return np.dtype(dtype).type(value)


def run_discriminator_loss(module, case):
    loss, cache = module.discriminator_loss_forward(case.real_logits, case.fake_logits)
    d_real, d_fake = module.discriminator_loss_backward(case.dloss, cache)
    return {"loss": _scalar(loss, case.real_logits.dtype), "d_real_logits": d_real, "d_fake_logits": d_fake}


def run_generator_loss(module, case):
    loss, cache = module.generator_loss_forward(case.fake_logits, case.kind)
    return {"loss": _scalar(loss, case.fake_logits.dtype), "d_fake_logits": module.generator_loss_backward(case.dloss, cache)}


def run_generator(module, case):
    x, cache = module.generator_forward(case.z, case.params, case.config)
    dz, grads = module.generator_backward(case.dx, cache)
    return {"x": x, "dz": dz, **{f"d{name}": g for name, g in grads.items()}}


def run_discriminator(module, case):
    logits, cache = module.discriminator_forward(case.x, case.params, case.config)
    dx, grads = module.discriminator_backward(case.dlogits, cache)
    return {"logits": logits, "dx": dx, **{f"d{name}": g for name, g in grads.items()}}


def run_gan_steps(module, case):
    """One discriminator step and one generator step: both losses and every parameter's gradient."""
    dtype = case.x.dtype
    disc_loss, disc_grads = module.discriminator_step(case.x, case.z, case.params, case.config)
    gen_loss, gen_grads = module.generator_step(case.z, case.params, case.config, case.kind)
    return {"disc_loss": _scalar(disc_loss, dtype), "gen_loss": _scalar(gen_loss, dtype),
            **{f"d{name}": g for name, g in {**disc_grads, **gen_grads}.items()}}


RUNNERS.update({
    "discriminator_loss": run_discriminator_loss,
    "generator_loss": run_generator_loss,
    "generator": run_generator,
    "discriminator": run_discriminator,
    "gan_steps": run_gan_steps,
})


# ----------------------------------------------------------------------------------------------
# The Transformer (scratch/transformer.py, scratch/encoder_decoder.py)
# ----------------------------------------------------------------------------------------------


def run_layer_norm(module, case):
    out, cache = module.layer_norm_forward(case.x, case.gamma, case.beta)
    dx, dgamma, dbeta = module.layer_norm_backward(case.dout, cache)
    return {"out": out, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def run_feed_forward(module, case):
    out, cache = module.feed_forward_forward(case.x, case.params)
    dx, grads = module.feed_forward_backward(case.dout, cache)
    return {"out": out, "dx": dx, **{f"d{name}": g for name, g in grads.items()}}


def run_encoder_layer(module, case):
    out, cache = module.encoder_layer_forward(case.x, case.params, case.num_heads, case.mask, case.norm_first)
    dx, grads = module.encoder_layer_backward(case.dout, cache)
    return {"out": out, "dx": dx, **{f"d{name}": g for name, g in grads.items()}}


def run_decoder_layer(module, case):
    out, cache = module.decoder_layer_forward(case.y, case.memory, case.params, case.num_heads, case.self_mask,
                                              case.memory_mask, case.norm_first)
    dy, dmemory, grads = module.decoder_layer_backward(case.dout, cache)
    return {"out": out, "dy": dy, "dmemory": dmemory, **{f"d{name}": g for name, g in grads.items()}}


def run_cross_entropy(module, case):
    """The loss, as returned (a scalar of the logits' dtype, as scratch returns it), and dlogits."""
    loss, cache = module.cross_entropy_forward(case.logits, case.targets, case.label_smoothing, case.ignore_index)
    return {"loss": np.asarray(loss), "dlogits": module.cross_entropy_backward(case.dloss, cache)}


def run_transformer(module, case):
    """The logits of the whole model and the gradient of every parameter (dropout off)."""
    logits, cache = module.transformer_forward(case.src, case.tgt_in, case.params, case.config)
    grads = module.transformer_backward(case.dlogits, cache)
    return {"logits": logits, **{f"d{name}": g for name, g in grads.items()}}


RUNNERS.update({
    "layer_norm": run_layer_norm,
    "feed_forward": run_feed_forward,
    "encoder_layer": run_encoder_layer,
    "decoder_layer": run_decoder_layer,
    "cross_entropy": run_cross_entropy,
    "transformer": run_transformer,
})


# ----------------------------------------------------------------------------------------------
# Convolutions (scratch/conv.py) and batch norm (scratch/layers.py)
# ----------------------------------------------------------------------------------------------


def _conv_results(out, grads):
    """{"out", "dx", "dw", "db"}, with no "db" where the backward says None (no bias)."""
    dx, dw, db = grads
    return {"out": out, "dx": dx, "dw": dw, **({} if db is None else {"db": db})}


def run_conv2d(module, case):
    out, cache = module.conv2d_forward(case.x, case.w, case.b, case.stride, case.padding, case.dilation)
    return _conv_results(out, module.conv2d_backward(case.dout, cache))


def run_conv_transpose2d(module, case):
    out, cache = module.conv_transpose2d_forward(case.x, case.w, case.b, case.stride, case.padding,
                                                 case.output_padding, case.dilation)
    return _conv_results(out, module.conv_transpose2d_backward(case.dout, cache))


def run_batch_norm(module, case):
    """Training mode: y and the three gradients, then the running statistics updated from the same
    cache (PyTorch's rule, momentum 0.1), then the evaluation path with the updated statistics."""
    out, cache = module.batch_norm_forward(case.x, case.gamma, case.beta)
    dx, dgamma, dbeta = module.batch_norm_backward(case.dout, cache)
    running_mean, running_var = module.batch_norm_update_running(case.running_mean, case.running_var, cache)
    eval_out = module.batch_norm_eval(case.x, case.gamma, case.beta, running_mean, running_var)
    return {"out": out, "dx": dx, "dgamma": dgamma, "dbeta": dbeta, "running_mean": running_mean,
            "running_var": running_var, "eval_out": eval_out}


RUNNERS.update({"conv2d": run_conv2d, "conv_transpose2d": run_conv_transpose2d, "batch_norm": run_batch_norm})
