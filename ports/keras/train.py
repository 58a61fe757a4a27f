"""What `python -m ports.keras train MODEL` trains: a Keras 3 model with its custom `train_step`,
the one `model.fit` calls, on scratch/runs.py's batches.

It starts from scratch's initial weights; its optimizer is Keras's own Adam and its noise comes
from the model's own layers (keras.random with a seed: the VAE's `Sampling`, the GAN's noise, the
Transformer's Dropout), so its trajectory is its own, not scratch's: the torch and tensorflow
trainers are the ones checked step for step. Checkpoints keep the weights in the scratch layout,
plus Keras's optimizer variables and random-seed states, so a run resumes exactly.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ports.keras.gan import from_keras_gan, to_keras_gan
from ports.keras.gpt import _keras_weights as _gpt_keras_weights
from ports.keras.gpt import from_keras_gpt, to_keras_gpt
from ports.keras.transformer import TransformerSchedule, from_keras_translator, to_keras_translator, translate
from ports.keras.vae import from_keras_vae, to_keras_vae
from scratch import encoder_decoder as M
from scratch import gan as G
from scratch import language_model as LM
from scratch import vae as V
from scratch.gpt import parameter_shapes as gpt_parameter_shapes
from scratch.language_model import GPTTrainer
from scratch.optim import warmup_cosine
from scratch.train import GANTrainer, VAETrainer
from scratch.translation import TransformerTrainer


class KerasVAETrainer(VAETrainer):
    IMPLEMENTATION, OPTIMIZER = "keras", "keras.optimizers.Adam"

    def _build(self, params):
        self.model = to_keras_vae(params, self.vae_config, seed=self.seed)
        self.model.compile(optimizer=keras.optimizers.Adam(learning_rate=self.lr))
        self.model.optimizer.build(self.model.trainable_variables)

    def forward(self, x, eps):
        out = self.model(x, eps=eps)
        return V.VAEOutput(float(out.loss), *(np.asarray(t) for t in (out.elbo, out.reconstruction, out.kl)), None, None, None, None)

    def _step(self, x, eps):
        # eps is not used: the model's Sampling layer draws the noise, as it does under fit
        return float(self.model.train_on_batch(x, return_dict=True)["loss"])

    def state(self):
        arrays = dict(from_keras_vae(self.model))
        for i, variable in enumerate(self.model.optimizer.variables):
            arrays[f"optim.keras.{i}"] = np.asarray(variable.numpy())
        arrays["optim.keras.sampling_seed"] = np.asarray(self.model.sampling.seed_generator.state.numpy())
        return arrays

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in V.parameter_shapes(self.vae_config)})
        for i, variable in enumerate(self.model.optimizer.variables):
            variable.assign(arrays[f"optim.keras.{i}"])
        self.model.sampling.seed_generator.state.assign(arrays["optim.keras.sampling_seed"])


class KerasGANTrainer(GANTrainer):
    """The `GAN` keras.Model trained by its own train_step (what fit runs), one real batch per step.

    Keras's Adam follows the same geometric decay through a keras ExponentialDecay schedule
    (staircase, one stair per step: D's optimizer counts `disc_steps` updates a step).
    """

    IMPLEMENTATION, OPTIMIZER = "keras", "keras.optimizers.Adam"

    def _schedule(self, updates_per_step):
        span = max(self.decay_steps - 1, 1)
        rate = (self.lr_end / self.lr) ** (1.0 / span)
        return keras.optimizers.schedules.ExponentialDecay(self.lr, updates_per_step, rate, staircase=True)

    def _build(self, params):
        self.model = to_keras_gan(params, self.gan_config, seed=self.seed, kind=self.kind, disc_steps=self.disc_steps)
        beta_1, beta_2 = self.BETAS
        self.model.compile(
            d_optimizer=keras.optimizers.Adam(self._schedule(self.disc_steps), beta_1=beta_1, beta_2=beta_2),
            g_optimizer=keras.optimizers.Adam(self._schedule(1), beta_1=beta_1, beta_2=beta_2),
        )

    def generate(self, z):
        return np.asarray(self.model.generate(z))

    def discriminate(self, x):
        return np.asarray(self.model.discriminate(x))

    def train_step(self, step):
        # the model's own train_step draws the noise (keras.random with the seed), as under fit
        x_real = self.real_batch((step - 1) * self.disc_steps + 1)
        logs = self.model.train_on_batch(x_real, return_dict=True)
        self.last_losses = (float(logs["d_loss"]), float(logs["g_loss"]))
        self.model.reset_metrics()  # the logs are this batch's losses, not a running mean
        return self.last_losses[0]

    def _optimizers(self):
        return (("gen", self.model.g_optimizer), ("disc", self.model.d_optimizer))

    def state(self):
        arrays = dict(from_keras_gan(self.model))
        for net, optimizer in self._optimizers():
            for i, variable in enumerate(optimizer.variables):
                arrays[f"optim.keras.{net}.{i}"] = np.asarray(variable.numpy())
        arrays["optim.keras.seed"] = np.asarray(self.model.seed_generator.state.numpy())
        return arrays

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in G.parameter_shapes(self.gan_config)})
        for net, optimizer in self._optimizers():
            for i, variable in enumerate(optimizer.variables):
                variable.assign(arrays[f"optim.keras.{net}.{i}"])
        self.model.seed_generator.state.assign(arrays["optim.keras.seed"])


class KerasTransformerTrainer(TransformerTrainer):
    """The `Translator` keras.Model trained by its own train_step (what fit runs), one batch per step,
    with keras.optimizers.Adam(β = (0.9, 0.98), ε = 1e-9) on `TransformerSchedule` (Eq. 3 × lr_factor).

    Same initial weights, batches, schedule and loss as scratch; Keras's Adam and Keras's dropout
    masks (each Dropout layer's seed generator) make the trajectory its own.

    A batch's shape varies with its sentences' lengths. `train_on_batch` would trace fit's train
    function anew for the first shapes it meets (and again after a resume), seconds each, and
    steps run in differently traced graphs round differently, which breaks an exact resume. So the
    model's train_step runs in one tf.function whose signature leaves B, S and T open: one graph
    for every batch, in an unbroken run and in a resumed one alike.
    """

    IMPLEMENTATION, OPTIMIZER = "keras", "keras.optimizers.Adam"

    def _build(self, params):
        self.model = to_keras_translator(params, self.model_config, seed=self.seed)
        beta_1, beta_2 = self.BETAS
        schedule = TransformerSchedule(self.model_config.d_model, self.warmup, self.lr_factor, self.cooldown, self.total_steps)
        self.model.compile(optimizer=keras.optimizers.Adam(schedule, beta_1=beta_1, beta_2=beta_2, epsilon=self.EPS),
                           label_smoothing=self.label_smoothing)
        ids = tf.TensorSpec((None, None), tf.int64)
        # (autograph off: train_step has no tensor-dependent Python control flow, and converting it is slow)
        self._train_step = tf.function(lambda src, tgt_in, tgt_out: self.model.train_step(((src, tgt_in), tgt_out)),
                                       input_signature=[ids, ids, ids], autograph=False)

    def _step(self, src, tgt_in, tgt_out, step):
        # the optimizer counts its own updates: after step − 1 of them the schedule gives rate(step)
        self.model.reset_metrics()  # the loss reported is this batch's, not a running mean
        logs = self._train_step(*(tf.constant(a, tf.int64) for a in (src, tgt_in, tgt_out)))
        return float(logs["loss"])

    def logits(self, src, tgt_in):
        return np.asarray(self.model((src, tgt_in), training=False))

    def translate_ids(self, src):
        return translate(self.model, src)

    def numpy_params(self):
        return from_keras_translator(self.model)

    def _seed_generators(self):
        stacks = self.model.encoder_layers + self.model.decoder_layers
        layers = [self.model.embed_dropout] + [layer.dropout for layer in stacks]
        return [layer.seed_generator for layer in layers if hasattr(layer, "seed_generator")]  # none at rate 0

    def state(self):
        arrays = {**self.numpy_params(), **self.vocab_arrays()}
        for i, variable in enumerate(self.model.optimizer.variables):
            arrays[f"optim.keras.{i}"] = np.asarray(variable.numpy())
        for i, generator in enumerate(self._seed_generators()):
            arrays[f"optim.keras.seed.{i}"] = np.asarray(generator.state.numpy())
        return arrays

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in M.parameter_shapes(self.model_config)})
        for i, variable in enumerate(self.model.optimizer.variables):
            variable.assign(arrays[f"optim.keras.{i}"])
        for i, generator in enumerate(self._seed_generators()):
            generator.state.assign(arrays[f"optim.keras.seed.{i}"])


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """scratch/optim.py's warmup_cosine for a Keras optimizer: lr · s / warmup up to the warm-up, then a
    half cosine down to lr_min at step `steps`, lr_min after. A Keras optimizer calls its schedule with
    the number of updates made so far, so the step is that count + 1 (the first update takes rate(1)).
    Computed in float32, as Keras keeps rates."""

    def __init__(self, lr, warmup, steps, lr_min=0.0):
        warmup_cosine(lr, warmup, steps, lr_min)  # scratch's checks of every argument
        self.lr, self.warmup, self.steps, self.lr_min = float(lr), int(warmup), int(steps), float(lr_min)

    def __call__(self, iterations):
        step = ops.cast(iterations, "float32") + 1.0
        warm = self.lr * step / max(self.warmup, 1)
        progress = ops.clip((step - self.warmup) / max(self.steps - self.warmup, 1), 0.0, 1.0)  # 0 → 1
        cosine = self.lr_min + (self.lr - self.lr_min) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step <= self.warmup, warm, cosine)

    def get_config(self):
        return {"lr": self.lr, "warmup": self.warmup, "steps": self.steps, "lr_min": self.lr_min}


class KerasGPTTrainer(GPTTrainer):
    """ports/keras/gpt.py's GPT keras.Model trained by its own train_step (what fit runs), one batch per step,
    with keras.optimizers.AdamW on `WarmupCosine`, the biases and layer-norm parameters excluded from decay.

    Same initial weights, batches, rate and loss as scratch; Keras's AdamW (which moves ε, see
    ports/tensorflow/optim.py) makes the trajectory its own. The batch's length varies with its names,
    so train_step runs in one tf.function whose signature leaves B and T open: one graph for every
    batch, in an unbroken run and in a resumed one alike. Checkpoints: the weights in the scratch
    layout plus Keras's optimizer variables, so a run resumes exactly.
    """

    IMPLEMENTATION, OPTIMIZER = "keras", "keras.optimizers.AdamW"

    def _build(self, params):
        self.model = to_keras_gpt(params, self.model_config, pad_id=LM.PAD_ID)
        beta_1, beta_2 = self.BETAS
        optimizer = keras.optimizers.AdamW(WarmupCosine(self.lr, self.warmup, self.decay_steps, self.lr_min),
                                           weight_decay=self.weight_decay, beta_1=beta_1, beta_2=beta_2, epsilon=self.EPS)
        weights = _gpt_keras_weights(self.model)
        optimizer.exclude_from_weight_decay(var_list=[v for name, v in weights.items() if name not in self.decay_names])
        self.model.compile(optimizer=optimizer)
        self.model.optimizer.build(self.model.trainable_variables)
        ids = tf.TensorSpec((None, None), tf.int64)
        self._train_step = tf.function(lambda x, y: self.model.train_step((x, y)), input_signature=[ids, ids],
                                       autograph=False)

    def _step(self, tokens, step):
        # the optimizer counts its own updates: after step − 1 of them the schedule gives rate(step)
        self.model.reset_metrics()  # the loss reported is this batch's, not a running mean
        logs = self._train_step(tf.constant(tokens[:, :-1], tf.int64), tf.constant(tokens[:, 1:], tf.int64))
        return float(logs["loss"])

    def logits(self, inputs):
        return np.asarray(self.model(inputs, training=False))

    def numpy_params(self):
        return from_keras_gpt(self.model)

    def state(self):
        arrays = {**self.numpy_params(), **self.extra_state()}
        for i, variable in enumerate(self.model.optimizer.variables):
            arrays[f"optim.keras.{i}"] = np.asarray(variable.numpy())
        return arrays

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in gpt_parameter_shapes(self.model_config)})
        for i, variable in enumerate(self.model.optimizer.variables):
            variable.assign(arrays[f"optim.keras.{i}"])


TRAINERS = {"vae": KerasVAETrainer, "gan": KerasGANTrainer, "transformer": KerasTransformerTrainer, "gpt": KerasGPTTrainer}
