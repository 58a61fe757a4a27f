"""What `python -m ports.tensorflow train diffusion --data ring|grid` trains: scratch/train_diffusion.py with
TensorFlow doing the work, a tf.Module denoiser and a tf.GradientTape step compiled by tf.function.

Same initial weights, batches, steps t and noise ε as scratch (scratch/train_diffusion.py picks all
three from the step number); the optimizer is ports/tensorflow/optim.py's Adam, which equals scratch's
and PyTorch's step for step, its rate a tf.Variable assigned the cosine schedule's value before each
step. Checkpoints are in the scratch layout, Adam's moments included, so runs resume across implementations.
"""

import numpy as np
import tensorflow as tf

from ports.tensorflow.diffusion import _eps_loss, _q_sample, from_tf_mlp_denoiser, to_tf_mlp_denoiser
from ports.tensorflow.optim import Adam
from scratch import diffusion as Df
from scratch.runs import RunError
from scratch.train import split_optimizer_state
from scratch.train_diffusion import DiffusionTrainer

# The denoisers this port has: the scratch Denoiser → (to a tf.Module, back to the scratch layout)
TF_DENOISERS = {Df.MLP_DENOISER: (to_tf_mlp_denoiser, from_tf_mlp_denoiser)}


class TensorFlowDiffusionTrainer(DiffusionTrainer):
    """ports/tensorflow/diffusion.py's MLPDenoiser with a tf.function-compiled step and ports/tensorflow/optim.py's Adam."""

    IMPLEMENTATION, OPTIMIZER = "tensorflow", "adam (ports/tensorflow/optim.py)"

    def __init__(self, data, *args, **kwargs):
        if data == "mnist":  # scratch/train_diffusion.py hands the digits to scratch/guidance.py's guided trainer
            raise RunError("--data mnist: the TensorFlow diffusion trainer has the mixtures' MLP (--data ring, grid); "
                           "the word-guided digit U-Net trains in scratch: python -m scratch train diffusion --data mnist")
        super().__init__(data, *args, **kwargs)

    def _converters(self):
        if self.denoiser not in TF_DENOISERS:
            raise ValueError(f"the TensorFlow port has no module for this denoiser yet: it has the MLP of "
                             f"ports/tensorflow/diffusion.py (--data ring, grid), got {self.denoiser_config!r}")
        return TF_DENOISERS[self.denoiser]

    def _build(self, params):
        self.module = self._converters()[0](params, self.denoiser_config)
        self.lr_variable = tf.Variable(self.lr, dtype=tf.float64, trainable=False, name="lr")
        self.optimizer = Adam(self.module.params, lr=self.lr_variable)
        alphas_cumprod = tf.constant(self.alphas_cumprod)  # (T,) float64
        data = tf.TensorSpec((None, *self.dataset.sample_shape), tf.as_dtype(self.dtype))
        steps = tf.TensorSpec((None,), tf.int64)

        # one trace for every batch (B left open); autograph off: nothing in the step branches on a tensor
        @tf.function(input_signature=[data, steps, data], autograph=False)
        def step(x0, t, eps):
            x_t = _q_sample(x0, t, eps, alphas_cumprod)  # (B, ...): no gradient reaches the data
            with tf.GradientTape() as tape:
                loss = _eps_loss(self.module(x_t, t), eps)
            params = self.module.params
            grads = dict(zip(params, tape.gradient(loss, list(params.values()))))
            self.optimizer.apply(grads, params)
            return loss

        @tf.function(input_signature=[data, steps], autograph=False)
        def eps_pred(x_t, t):
            return self.module(x_t, t)

        self._compiled_step, self._compiled_eps = step, eps_pred

    def _eps(self, x_t, t, cond):
        if cond is not None:
            raise ValueError(f"the MLP denoiser is unconditional: cond must be None, got {type(cond).__name__}")
        return self._compiled_eps(tf.constant(x_t), tf.constant(np.asarray(t, np.int64))).numpy()

    def _step(self, x0, t, eps, cond):
        if cond is not None:
            raise ValueError(f"the MLP denoiser is unconditional: cond must be None, got {type(cond).__name__}")
        self.lr_variable.assign(self.lr_schedule(self.current_step))  # what scratch's Adam reads at this step
        return float(self._compiled_step(tf.constant(x0), tf.constant(t.astype(np.int64)), tf.constant(eps)))

    def state(self):
        optim = {f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}
        return {**self._converters()[1](self.module), **optim}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in self.denoiser.shapes(self.denoiser_config)})
        self.optimizer.load_state_dict(split_optimizer_state(arrays))


DIFFUSION_TRAINERS = {"diffusion": TensorFlowDiffusionTrainer}
