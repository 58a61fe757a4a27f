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
