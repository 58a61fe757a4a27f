"""Run one op's forward and backward on any implementation; collect every result by name.

Each runner returns a dict {"out": …, "d<input>": …}, so that a check compares two
implementations name by name and a failure says which output or gradient disagrees.
"""


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
