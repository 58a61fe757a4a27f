"""Optimisers and learning-rate schedules: SGD with momentum, Adam, the Transformer's warm-up.

Shape letters: `P` the shape of one parameter (any shape); every per-parameter buffer has it.

Parameters live in a flat dict of NumPy arrays (`{"attn.W_q": array, ...}`) and the gradients in
a dict with the same keys, as every model backward returns them. `step(params, grads)` updates
the arrays of `params` in place, so whatever holds the same dict sees the new values, and a
float32 parameter stays float32 (every constant is a Python float).

The learning rate `lr` is a float, or a schedule: a callable `lr(t) -> float` called with the
number t = 1, 2, ... of the step being taken (`constant` and `transformer_schedule` below).

Both optimisers equal `torch.optim` step for step (checks/test_optim.py): SGD(lr, momentum) is
`torch.optim.SGD(lr=lr, momentum=momentum)` (no dampening, no Nesterov, no weight decay), Adam
is `torch.optim.Adam` with its defaults (no weight decay, no AMSGrad), Algorithm 1 of Kingma &
Ba 2015 as written in the paper.

Checkpoints: `state_dict()` is a flat dict of NumPy arrays ("t", "m.<param name>", ...) that
`np.savez` stores as is (no pickle), and `load_state_dict(state)` restores it, after which the
run continues bit for bit as if it had never stopped. Hyperparameters (lr, betas, eps,
momentum) are not state: they come from the constructor, that is from the run's config.
"""

import math
import numbers

import numpy as np

from scratch.validate import as_float_array


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


def _check_lr(lr):
    """A schedule (any callable) as is, or a number ≥ 0 as a Python float."""
    if callable(lr):
        return lr
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"lr must be a float or a schedule lr(step) -> float, got {lr!r}")
    if not (math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"lr must be a finite number ≥ 0, got {lr!r}")
    return float(lr)


def _lr_at(lr, t):
    """The learning rate for step t (a Python float, so float32 parameters stay float32)."""
    value = lr(t) if callable(lr) else lr
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"the lr schedule must return a finite number ≥ 0, it returned {value!r} for step {t}")
    return float(value)


def _check_params_and_grads(params, grads):
    """Check that grads has exactly the keys, shapes and dtypes of params; return grads as arrays."""
    for name, mapping in (("params", params), ("grads", grads)):
        if not hasattr(mapping, "keys"):
            raise TypeError(f"{name} must be a dict of arrays keyed by parameter name, got {type(mapping).__name__}")
    missing = [name for name in params if name not in grads]
    extra = [name for name in grads if name not in params]
    if missing or extra:
        raise ValueError(
            f"grads must have the keys of params: missing {missing}, unexpected {extra} "
            f"(params has {list(params)})"
        )
    checked = {}
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
            got = f"dtype {p.dtype}" if isinstance(p, np.ndarray) else type(p).__name__
            raise TypeError(f"params[{name!r}] must be a floating-point NumPy array (it is updated in place), got {got}")
        if not p.flags.writeable:
            raise ValueError(f"params[{name!r}] must be writeable (it is updated in place), got a read-only array of shape {p.shape}")
        g = as_float_array(f"grads[{name!r}]", grads[name])
        if g.shape != p.shape:
            raise ValueError(f"grads[{name!r}] must have shape {p.shape} to match params[{name!r}], got shape {g.shape}")
        if g.dtype != p.dtype:
            raise TypeError(f"grads[{name!r}] must have the dtype of params[{name!r}], {p.dtype}, got {g.dtype}")
        checked[name] = g
    return checked


def _check_unit_interval(name, value):
    """A number in [0, 1), as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= value < 1.0):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------
# What SGD and Adam share: the step counter, the per-parameter buffers, and their state dict
# ----------------------------------------------------------------------------------------------


class _Optimizer:
    def __init__(self, lr, buffer_kinds):
        self.lr = _check_lr(lr)
        self.t = 0  # steps taken so far; the next step is step t + 1
        self.buffers = {kind: {} for kind in buffer_kinds}  # kind → parameter name → array (P)

    def _begin_step(self, params, grads):
        """Check everything, create zero buffers on the first step, count the step; return (grads, lr)."""
        grads = _check_params_and_grads(params, grads)
        lr = _lr_at(self.lr, self.t + 1)
        for kind, buffers in self.buffers.items():
            if self.t == 0 and not buffers:
                buffers.update({name: np.zeros_like(p) for name, p in params.items()})  # (P) each
            if set(buffers) != set(params):
                raise ValueError(
                    f"the optimizer's state has {kind!r} buffers for {sorted(buffers)}, but params has "
                    f"{sorted(params)}: was the state made for another model?"
                )
            for name, p in params.items():
                if buffers[name].shape != p.shape or buffers[name].dtype != p.dtype:
                    raise ValueError(
                        f"the optimizer's {kind!r} buffer for {name!r} has shape {buffers[name].shape} and dtype "
                        f"{buffers[name].dtype}, but params[{name!r}] has shape {p.shape} and dtype {p.dtype}"
                    )
        self.t += 1
        return grads, lr

    def state_dict(self):
        """A flat dict of copies: "t" (a 0-d int64 array) and "<kind>.<param name>" for each buffer."""
        state = {"t": np.array(self.t, dtype=np.int64)}
        for kind, buffers in self.buffers.items():
            for name, buffer in buffers.items():
                state[f"{kind}.{name}"] = buffer.copy()
        return state

    def load_state_dict(self, state):
        """Restore what `state_dict` returned (a dict, or the NpzFile of `np.load`), copying it."""
        if "t" not in state:
            raise ValueError(f"state must have the step count 't', got keys {sorted(state)}")
        t = np.asarray(state["t"])
        if t.shape != () or t.dtype.kind not in "iu" or int(t) < 0:
            raise ValueError(f"state['t'] must be a non-negative integer scalar, got dtype {t.dtype} with shape {t.shape}")
        buffers = {kind: {} for kind in self.buffers}
        unexpected = []
        for key in state:
            if key == "t":
                continue
            kind, dot, name = key.partition(".")
            if not dot or not name or kind not in buffers:
                unexpected.append(key)
                continue
            buffers[kind][name] = as_float_array(f"state[{key!r}]", state[key]).copy()
        if unexpected:
            expected = ["t"] + [f"{kind}.<param name>" for kind in self.buffers]
            raise ValueError(f"state has unexpected keys {sorted(unexpected)}; {type(self).__name__} keeps {expected}")
        kinds = list(buffers)
        for kind in kinds[1:]:
            first = buffers[kinds[0]]
            if set(buffers[kind]) != set(first) or any(buffers[kind][n].shape != first[n].shape for n in first):
                raise ValueError(f"state must hold {kinds} buffers of the same shapes for the same parameters")
        self.t, self.buffers = int(t), buffers


# ----------------------------------------------------------------------------------------------
# The optimisers
# ----------------------------------------------------------------------------------------------


class SGD(_Optimizer):
    """Stochastic gradient descent, with heavy-ball momentum when momentum > 0.

    Equals `torch.optim.SGD(params, lr, momentum)`: the velocity b starts at 0, so b = g after
    the first step, and the learning rate multiplies b, not g (Sutskever et al. 2013 put it inside).
    State: "t" and, with momentum, "momentum_buffer.<param name>" (torch's name for b).
    """

    def __init__(self, lr, momentum=0.0):
        self.momentum = _check_unit_interval("momentum", momentum)
        super().__init__(lr, ("momentum_buffer",) if self.momentum > 0.0 else ())

    def step(self, params, grads):
        """Update every array of `params` in place from `grads` (same keys, shapes and dtypes)."""
        grads, lr = self._begin_step(params, grads)
        for name, p in params.items():
            g = grads[name]  # (P)
            # BEGIN SOLUTION
            # HINT: without momentum θ ← θ − η g; with it, update the buffer in place first.
            if self.momentum == 0.0:
                # θ_t = θ_{t−1} − η g_t
                p -= lr * g  # (P)
                continue
            b = self.buffers["momentum_buffer"][name]  # (P), 0 before the first step
            # b_t = μ b_{t−1} + g_t   (Polyak 1964, as torch.optim.SGD writes it)
            b *= self.momentum
            b += g  # (P)
            # θ_t = θ_{t−1} − η b_t
            p -= lr * b  # (P)
            # END SOLUTION


class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1): per-coordinate steps from bias-corrected moments.

    Equals `torch.optim.Adam(params, lr, betas, eps)` with no weight decay and no AMSGrad.
    State: "t", "m.<param name>" (first moment) and "v.<param name>" (second raw moment).
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.beta1 = _check_unit_interval("betas[0]", betas[0])
        self.beta2 = _check_unit_interval("betas[1]", betas[1])
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps >= 0.0):
            raise ValueError(f"eps must be a finite number ≥ 0, got {eps!r}")
        self.eps = float(eps)
        super().__init__(lr, ("m", "v"))

    def step(self, params, grads):
        """Update every array of `params` in place from `grads` (same keys, shapes and dtypes)."""
        grads, lr = self._begin_step(params, grads)
        t, beta1, beta2, eps = self.t, self.beta1, self.beta2, self.eps
        for name, p in params.items():
            g = grads[name]  # (P)
            m, v = self.buffers["m"][name], self.buffers["v"][name]  # (P) each, 0 before step 1
            # BEGIN SOLUTION
            # HINT: update m and v in place (they are the state), then correct their bias towards 0.
            # m_t = β1 · m_{t−1} + (1 − β1) · g_t        (Algorithm 1, Kingma & Ba 2015)
            m *= beta1
            m += (1.0 - beta1) * g  # (P)
            # v_t = β2 · v_{t−1} + (1 − β2) · g_t²
            v *= beta2
            v += (1.0 - beta2) * (g * g)  # (P)
            # m̂_t = m_t / (1 − β1^t): m started at 0, so early averages are too small by 1 − β1^t
            m_hat = m / (1.0 - beta1**t)  # (P)
            # v̂_t = v_t / (1 − β2^t)
            v_hat = v / (1.0 - beta2**t)  # (P)
            # θ_t = θ_{t−1} − α · m̂_t / (√v̂_t + ε)
            p -= lr * m_hat / (np.sqrt(v_hat) + eps)  # (P)
            # END SOLUTION


# ----------------------------------------------------------------------------------------------
# Learning-rate schedules: plain callables step -> lr, with step = 1, 2, ...
# ----------------------------------------------------------------------------------------------


def constant(lr):
    """The schedule lr(step) = lr at every step."""
    if callable(lr):
        raise TypeError(f"constant(lr) takes a number, got the callable {lr!r}")
    lr = _check_lr(lr)

    def schedule(step):
        return lr

    schedule.__qualname__ = f"constant({lr!r})"
    return schedule


def transformer_schedule(d_model, warmup):
    """Vaswani et al. 2017, Eq. (3): a linear warm-up over `warmup` steps, then decay as 1/√step.

    lrate(step) = d_model^−0.5 · min(step^−0.5, step · warmup^−1.5), step = 1, 2, ...
    The two terms meet at step = warmup, where the rate peaks at (d_model · warmup)^−0.5.
    The paper uses it with d_model = 512, warmup = 4000 and Adam(betas=(0.9, 0.98), eps=1e-9).
    """
    for name, value in (("d_model", d_model), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    d_model, warmup = int(d_model), int(warmup)

    def schedule(step):
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
            raise ValueError(f"step must be an int ≥ 1 (steps are counted from 1), got {step!r}")
        step = int(step)
        # BEGIN SOLUTION
        # HINT: Eq. (3) in the docstring: a straight line up to step = warmup, then 1/√step; steps count from 1.
        # Eq. (3), Vaswani et al. 2017: lrate = d_model^−0.5 · min(step_num^−0.5, step_num · warmup_steps^−1.5)
        return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
        # END SOLUTION

    schedule.__qualname__ = f"transformer_schedule(d_model={d_model}, warmup={warmup})"
    return schedule


def step_decay(lr, boundaries, factors):
    """lr · factors[i] once step > boundaries[i] (the last boundary passed wins); lr before the first.

    step_decay(3e-3, [5000, 8000], [1/3, 1/15]) trains at 3e-3, then 1e-3, then 2e-4: a large rate
    to get near the optimum fast, smaller ones to settle into it despite the gradient noise.
    """
    lr = _check_lr(lr)
    if len(boundaries) != len(factors) or list(boundaries) != sorted(boundaries):
        raise ValueError(f"boundaries must be increasing and match factors one to one, got {boundaries} and {factors}")

    def schedule(step):
        passed = [f for b, f in zip(boundaries, factors) if step > b]
        return lr * passed[-1] if passed else lr

    schedule.__qualname__ = f"step_decay({lr!r}, {list(boundaries)!r}, {list(factors)!r})"
    return schedule


def exponential_decay(lr, lr_end, steps):
    """lr at step 1, falling geometrically to lr_end at step `steps` (and staying there after).

    lr(step) = lr · (lr_end / lr)^((step − 1) / (steps − 1)). A GAN trained at a constant rate
    keeps circling its equilibrium; shrinking the rate lets both players settle, which is what
    puts generated points within a few standard deviations of a narrow mode.
    """
    lr, lr_end = _check_lr(lr), _check_lr(lr_end)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    ratio, span = lr_end / lr, max(int(steps) - 1, 1)

    def schedule(step):
        return lr * ratio ** (min(step - 1, span) / span)

    schedule.__qualname__ = f"exponential_decay({lr!r}, {lr_end!r}, {steps})"
    return schedule


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019), as `torch.optim.AdamW`.

    Before each Adam step the decayed parameters shrink: θ ← θ (1 − η λ), η the step's rate, λ
    `weight_decay`. Unlike an L2 term added to the loss, the shrinkage does not pass through Adam's
    per-coordinate scaling, so every decayed weight shrinks by the same factor. `decay` names the
    parameters decayed (None: all of them, as one torch parameter group; GPTs decay only the
    matrices, the biases and layer-norm gains get a second group with weight_decay 0).
    State: as Adam's.
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay=None):
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) or not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be a number ≥ 0, got {weight_decay!r}")
        self.weight_decay, self.decay = float(weight_decay), None if decay is None else frozenset(decay)
        super().__init__(lr, betas, eps)

    def step(self, params, grads):
        """Shrink the decayed parameters in place, then take Adam's step."""
        _check_params_and_grads(params, grads)
        lr = _lr_at(self.lr, self.t + 1)
        for name, p in params.items():
            if self.decay is None or name in self.decay:
                # θ ← θ (1 − η λ)
                p *= 1.0 - lr * self.weight_decay
        super().step(params, grads)


def warmup_cosine(lr, warmup, steps, lr_min=0.0):
    """A linear warm-up to lr over `warmup` steps, then a half cosine down to lr_min at step `steps`.

    lr(s) = lr · s / warmup for s ≤ warmup; then lr_min + (lr − lr_min) · ½ (1 + cos(π (s − warmup) /
    (steps − warmup))); lr_min after `steps`. One cycle (Smith 2018), as GPT-3 and nanoGPT train:
    the warm-up keeps Adam's first, badly estimated steps small; the slow end lets the weights settle.
    """
    lr, lr_min = _check_lr(lr), _check_lr(lr_min)
    for name, value in (("warmup", warmup), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int ≥ 0, got {value!r}")
    if steps < max(warmup, 1):
        raise ValueError(f"steps = {steps} must be ≥ warmup = {warmup} and ≥ 1")
    warmup, steps = int(warmup), int(steps)

    def schedule(step):
        if step <= warmup:
            return lr * step / warmup
        progress = min(step - warmup, steps - warmup) / max(steps - warmup, 1)  # 0 → 1
        return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))

    schedule.__qualname__ = f"warmup_cosine({lr!r}, warmup={warmup}, steps={steps}, lr_min={lr_min!r})"
    return schedule
