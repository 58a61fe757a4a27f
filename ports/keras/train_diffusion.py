"""What `python -m ports.keras train diffusion --data ring|grid|mnist` trains: ports/keras/diffusion.py's
`DenoisingDiffusion` keras.Model (the mixtures' MLP inside), or for the digits ports/keras/unet.py's
`GuidedDenoisingDiffusion` (the word-guided U-Net inside), one `train_on_batch` (Keras's own train_step,
what fit runs) a step.

Diffusion has no randomness inside the model: the batch, its steps t and its noise ε are data, which
scratch/train_diffusion.py picks from the step number for every implementation (on the digits also
the rows whose word is dropped to ∅, scratch/guidance.py). So unlike the other Keras trainers
(ports/keras/train.py), this one can follow scratch's trajectory step for step, and it does, with
one change to Keras's Adam: `keras.optimizers.Adam` folds the bias corrections into the
rate, θ ← θ − α √(1 − β2ᵗ)/(1 − β1ᵗ) · m / (√v + ε), which moves ε (ports/tensorflow/optim.py
shows by how much). `Adam` below is Keras's Adam with `update_step` written as Kingma and Ba's
Algorithm 1 prints it, ε added to √v̂, as scratch and torch.optim.Adam compute it; its variables
(iterations, momentums, velocities) are Keras's own. Its rate follows `CosineDecay64`, scratch's
warmup_cosine(lr, 0, decay_steps) in float64 (Keras's rates are float32 by default, 3e-8 off).

Checkpoints: the weights in the scratch layout and the optimizer's state as scratch's Adam keeps
it ("optim.t", "optim.m.<name>", "optim.v.<name>", the U-Net's convolution moments transposed to
scratch's (C_out, C_in, kh, kw) as its kernels are), so a Keras run resumes in scratch and back.
The guided digit samples are scratch's guided DDIM (scratch/guidance.py) on the weights converted back.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ports.keras import unet as KU
from ports.keras.diffusion import DenoisingDiffusion, from_keras_mlp_denoiser, parameter_map, to_keras_mlp_denoiser
from scratch import diffusion as Df
from scratch import unet as U
from scratch.guidance import GuidedDigitTrainer, in_chunks
from scratch.optim import warmup_cosine
from scratch.runs import RunError
from scratch.train_diffusion import DiffusionTrainer


class KerasDenoiser(NamedTuple):
    """How the port holds one scratch denoiser: its Keras model, the weights' way back, and their layouts."""

    to_keras: Callable  # (params, config) → a built keras.Model holding them
    from_keras: Callable  # model → the scratch parameter dict
    parameter_map: Callable  # model → {scratch name: the Keras variable}
    to_scratch_layout: Callable  # (name, a variable's NumPy value) → scratch's layout (Adam's moments too)
    to_keras_layout: Callable  # (name, a scratch-layout array) → its variable's layout


def _same_layout(name, value):
    return value  # a Dense kernel is (in, out), as scratch's W


# The denoisers this port has: the scratch Denoiser → how this port holds it
KERAS_DENOISERS = {Df.MLP_DENOISER: KerasDenoiser(to_keras_mlp_denoiser, from_keras_mlp_denoiser, parameter_map,
                                                  _same_layout, _same_layout),
                   U.UNET_DENOISER: KerasDenoiser(KU.to_keras_unet, KU.from_keras_unet, KU.parameter_map,
                                                  KU.to_scratch_layout, KU.to_keras_layout)}


class CosineDecay64(keras.optimizers.schedules.LearningRateSchedule):
    """lr · ½ (1 + cos(π · min(s, steps) / steps)) at update s = iterations + 1, in float64:
    scratch/optim.py's warmup_cosine(lr, 0, steps), the rate scratch's Adam takes at its step s."""

    def __init__(self, lr, steps):
        warmup_cosine(lr, 0, steps)  # scratch's checks of both arguments
        self.lr, self.steps = float(lr), int(steps)

    def __call__(self, iterations):
        step = ops.cast(iterations, "float64") + 1.0  # a Keras optimizer passes the updates made so far
        progress = ops.minimum(step, float(self.steps)) / float(self.steps)  # 0 → 1
        return self.lr * 0.5 * (1.0 + ops.cos(math.pi * progress))

    def get_config(self):
        return {"lr": self.lr, "steps": self.steps}


class Adam(keras.optimizers.Adam):
    """keras.optimizers.Adam with Algorithm 1's update (Kingma and Ba 2015), scratch's and torch's:
    m̂ = m / (1 − β1ᵗ), v̂ = v / (1 − β2ᵗ), θ ← θ − α m̂ / (√v̂ + ε)."""

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        # an Embedding's gradient (the U-Net's word table) comes as IndexedSlices, one row per id looked up: summed
        # into a dense array, as scratch's table gradient is, and every row's moments decay at every step, as scratch's
        g = ops.cast(tf.convert_to_tensor(gradient), variable.dtype)
        t = ops.cast(self.iterations + 1, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        # m_t = β1 · m_{t−1} + (1 − β1) · g_t ;  v_t = β2 · v_{t−1} + (1 − β2) · g_t²
        self.assign(m, self.beta_1 * m + (1.0 - self.beta_1) * g)
        self.assign(v, self.beta_2 * v + (1.0 - self.beta_2) * (g * g))
        # θ_t = θ_{t−1} − α · m̂_t / (√v̂_t + ε)
        # (β as a tensor of the variable's dtype straight from the Python float: ops.cast would round it to float32 first)
        beta_1, beta_2 = (ops.convert_to_tensor(beta, dtype=variable.dtype) for beta in (self.beta_1, self.beta_2))
        m_hat = m / (1.0 - ops.power(beta_1, t))
        v_hat = v / (1.0 - ops.power(beta_2, t))
        self.assign_sub(variable, lr * m_hat / (ops.sqrt(v_hat) + self.epsilon))

    def moments(self, variable):
        """(m, v): the two Keras variables that hold `variable`'s first and second moments."""
        index = self._get_variable_index(variable)
        return self._momentums[index], self._velocities[index]


class KerasDenoiserSteps:
    """The Keras half of a diffusion trainer, mixed in before a scratch trainer: the denoiser's model inside
    a DenoisingDiffusion (`_wrap`), compiled with `Adam` above, one train_on_batch a step; checkpoints in the
    scratch layout. Same initial weights, batches, steps, noise, rate and loss as scratch: the same trajectory."""

    IMPLEMENTATION, OPTIMIZER = "keras", "keras.optimizers.Adam (Algorithm 1's ε)"

    def _converters(self):
        if self.denoiser not in KERAS_DENOISERS:
            raise ValueError(f"the Keras port has no model for this denoiser yet: it has the MLP of "
                             f"ports/keras/diffusion.py (--data ring, grid) and the U-Net of ports/keras/unet.py "
                             f"(--data mnist), got {self.denoiser_config!r}")
        return KERAS_DENOISERS[self.denoiser]

    def _build(self, params):
        self.denoiser_model = self._converters().to_keras(params, self.denoiser_config)
        self.model = self._wrap(self.denoiser_model, self.alphas_cumprod)
        # ε = 1e-8 as scratch's and torch's Adam (Keras's default is 1e-7)
        self.model.compile(optimizer=Adam(CosineDecay64(self.lr, self.decay_steps), beta_1=0.9, beta_2=0.999, epsilon=1e-8))
        self.model.optimizer.build(self.denoiser_model.trainable_variables)
        self._compile_eps()

    def _train_on_batch(self, inputs, eps):
        # the optimizer counts its own updates: after step − 1 of them the schedule gives rate(step)
        self.model.reset_metrics()  # the loss reported is this batch's, not a running mean
        logs = self.model.train_on_batch(inputs, eps, return_dict=True)
        return float(logs["loss"])

    def state(self):
        converters = self._converters()
        optimizer = self.model.optimizer
        arrays = {**converters.from_keras(self.denoiser_model), "optim.t": np.array(int(optimizer.iterations.numpy()), np.int64)}
        for name, variable in converters.parameter_map(self.denoiser_model).items():
            m, v = optimizer.moments(variable)
            arrays[f"optim.m.{name}"] = np.array(converters.to_scratch_layout(name, m.numpy()))
            arrays[f"optim.v.{name}"] = np.array(converters.to_scratch_layout(name, v.numpy()))
        return arrays

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in self.denoiser.shapes(self.denoiser_config)})
        optimizer = self.model.optimizer
        t = int(arrays["optim.t"])
        optimizer.iterations.assign(t)
        if t == 0:  # scratch's Adam has no moments before its first step
            return
        converters = self._converters()
        for name, variable in converters.parameter_map(self.denoiser_model).items():
            m, v = optimizer.moments(variable)
            m.assign(converters.to_keras_layout(name, arrays[f"optim.m.{name}"]))
            v.assign(converters.to_keras_layout(name, arrays[f"optim.v.{name}"]))


class KerasDiffusionTrainer(KerasDenoiserSteps, DiffusionTrainer):
    """The mixtures (--data ring, grid): `DenoisingDiffusion` (the MLP denoiser inside) trained by
    train_on_batch((x0, t, ε), ε) with `Adam` above."""

    _wrap = DenoisingDiffusion

    def __init__(self, data, *args, **kwargs):
        if data == "mnist":  # the digits are KerasGuidedDigitTrainer's (keras_diffusion_trainer picks it)
            raise RunError("--data mnist: KerasDiffusionTrainer trains the mixtures' MLP (--data ring, grid); "
                           "the word-guided digit U-Net is KerasGuidedDigitTrainer (python -m ports.keras train "
                           "diffusion --data mnist)")
        super().__init__(data, *args, **kwargs)

    def _compile_eps(self):
        data = tf.TensorSpec((None, *self.dataset.sample_shape), self.dtype.name)
        # the samplers call it a thousand times: one graph, traced once for any batch size
        self._compiled_eps = tf.function(lambda x_t, t: self.denoiser_model((x_t, t)),
                                         input_signature=[data, tf.TensorSpec((None,), tf.int64)], autograph=False)

    def _eps(self, x_t, t, cond):
        if cond is not None:
            raise ValueError(f"the MLP denoiser is unconditional: cond must be None, got {type(cond).__name__}")
        return np.asarray(self._compiled_eps(tf.constant(x_t), tf.constant(np.asarray(t, np.int64))))

    def _step(self, x0, t, eps, cond):
        if cond is not None:
            raise ValueError(f"the MLP denoiser is unconditional: cond must be None, got {type(cond).__name__}")
        return self._train_on_batch((x0, t.astype(np.int64), eps), eps)


class KerasGuidedDigitTrainer(KerasDenoiserSteps, GuidedDigitTrainer):
    """The digits (--data mnist): scratch/guidance.py's guided trainer, its batches and dropped words, with
    ports/keras/unet.py's UNet inside `GuidedDenoisingDiffusion`, trained by train_on_batch((x0, t, ε, cond), ε)
    with `Adam` above. `params` is the model's weights in the scratch layout: scratch's guided DDIM draws the
    samples from them (digit_samples)."""

    _wrap = KU.GuidedDenoisingDiffusion

    @property
    def params(self):
        return KU.from_keras_unet(self.denoiser_model)

    def _compile_eps(self):
        data, ids = tf.TensorSpec((None, *self.dataset.sample_shape), self.dtype.name), tf.TensorSpec((None,), tf.int64)
        # the evaluations call it on CHUNK images at a time: one graph, traced once
        self._compiled_eps = tf.function(lambda x_t, t, cond: self.denoiser_model((x_t, t), cond=cond),
                                         input_signature=[data, ids, ids], autograph=False)

    def _eps(self, x_t, t, cond):
        cond = np.full(len(x_t), U.NULL, np.int64) if cond is None else np.asarray(cond, np.int64)  # None: every row ∅
        t = np.asarray(t, np.int64)
        compiled = lambda x, s, c: np.asarray(self._compiled_eps(tf.constant(x), tf.constant(s), tf.constant(c)))
        return in_chunks(compiled, x_t, t, cond)  # CHUNK images a forward, as scratch's

    def _step(self, x0, t, eps, cond):
        return self._train_on_batch((x0, t.astype(np.int64), eps, np.asarray(cond, np.int64)), eps)


def keras_diffusion_trainer(data, *args, **kwargs):
    """The trainer of --data: KerasGuidedDigitTrainer for mnist, KerasDiffusionTrainer for the mixtures."""
    return (KerasGuidedDigitTrainer if data == "mnist" else KerasDiffusionTrainer)(data, *args, **kwargs)


DIFFUSION_TRAINERS = {"diffusion": keras_diffusion_trainer}
