"""Adam in TensorFlow, written to equal scratch/optim.py (and torch.optim.Adam) step for step.

Keras's own Adam folds the bias corrections into the learning rate, which moves ε:
θ ← θ − α·√(1 − β2ᵗ)/(1 − β1ᵗ) · m / (√v + ε), where scratch and PyTorch divide by √v̂ + ε with
v̂ = v / (1 − β2ᵗ). The two differ in the 7th digit from the first step, so a trajectory
check against scratch needs this one. Shapes as in scratch/optim.py: (P) a parameter's shape.
"""

import tensorflow as tf


class Adam(tf.Module):
    """Adam (Kingma and Ba, 2015, Algorithm 1) over a dict of named tf.Variables."""

    def __init__(self, variables, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, name="adam"):
        """lr: a number, or a tf.Variable that the caller assigns to follow a schedule."""
        super().__init__(name=name)
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.t = tf.Variable(0, dtype=tf.int64, name="t")
        self.m = {k: tf.Variable(tf.zeros_like(v), name=f"m_{i}") for i, (k, v) in enumerate(variables.items())}
        self.v = {k: tf.Variable(tf.zeros_like(v), name=f"v_{i}") for i, (k, v) in enumerate(variables.items())}

    def apply(self, grads, variables):
        """One step: grads and variables are dicts with the same keys."""
        self.t.assign_add(1)
        for name, p in variables.items():
            g, m, v = grads[name], self.m[name], self.v[name]  # (P) each
            t = tf.cast(self.t, p.dtype)
            # m_t = β1 · m_{t−1} + (1 − β1) · g_t ;  v_t = β2 · v_{t−1} + (1 − β2) · g_t²
            m.assign(self.beta1 * m + (1.0 - self.beta1) * g)
            v.assign(self.beta2 * v + (1.0 - self.beta2) * g * g)
            # θ_t = θ_{t−1} − α · m̂_t / (√v̂_t + ε), m̂ = m / (1 − β1ᵗ), v̂ = v / (1 − β2ᵗ)
            m_hat = m / (1.0 - self.beta1**t)
            v_hat = v / (1.0 - self.beta2**t)
            # a Python float stays a Python float (tf.cast would round it to float32 first)
            lr = self.lr if isinstance(self.lr, float) else tf.cast(self.lr, p.dtype)
            p.assign_sub(lr * m_hat / (tf.sqrt(v_hat) + self.eps))

    def state_dict(self):
        """The state in scratch/optim.py's layout: "t", "m.<name>", "v.<name>"."""
        state = {"t": self.t.numpy()}
        state.update({f"m.{k}": v.numpy() for k, v in self.m.items()})
        state.update({f"v.{k}": v.numpy() for k, v in self.v.items()})
        return state

    def load_state_dict(self, state):
        self.t.assign(int(state["t"]))
        for k in self.m:
            self.m[k].assign(state[f"m.{k}"])
            self.v[k].assign(state[f"v.{k}"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019), as scratch/optim.py's AdamW and
    torch.optim.AdamW: before each Adam step the decayed variables shrink, θ ← θ (1 − η λ).

    `decay` names the variables decayed (None: all of them); the GPT decays its matrices and
    embeddings, not its biases and layer-norm parameters. State: as Adam's.
    """

    def __init__(self, variables, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay=None, name="adamw"):
        super().__init__(variables, lr, betas, eps, name)
        self.weight_decay, self.decay = float(weight_decay), None if decay is None else frozenset(decay)

    def apply(self, grads, variables):
        # η of the step about to be taken; 1 − η λ in float64, as scratch computes it in Python floats
        lr = tf.cast(self.lr, tf.float64)
        for name, p in variables.items():
            if self.decay is None or name in self.decay:
                p.assign(p * tf.cast(1.0 - lr * self.weight_decay, p.dtype))
        super().apply(grads, variables)

