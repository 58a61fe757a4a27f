"""What `python -m ports.keras train gan|vae --data mnist --arch conv` trains: Keras 3 models with their own
`train_step` (the one `fit` calls), on scratch/runs.py's batches, as ports/keras/train.py does for the MLPs.

Both start from scratch's initial weights and use Keras's own Adam, which moves ε (ports/tensorflow/optim.py),
so neither trajectory is scratch's to the last digit:

- the DCGAN's train_step takes scratch's very batches and noise, as a tuple (x_real, z_disc, z_gen), so it
  plays scratch's game with Keras's Adam and Keras's batch-norm rule (the moving variance of biased batch
  variances, ports/keras/dcgan.py);
- the conv VAE's Sampling layer draws its own ε (keras.random with the run's seed), as under fit.

Checkpoints are in the scratch layout, Adam's state included: Keras's Adam keeps the same moments m and v
as scratch's (only the step's ε differs), so its iterations and moments are written as "optim…t",
"optim…m.<name>" and "optim…v.<name>" (convolution kernels transposed back to scratch's layout), and a Keras
checkpoint resumes in scratch, PyTorch or TensorFlow, and theirs in Keras. The Sampling layer's seed generator
starts each step at the state (seed, step), so its noise too is a function of the step number alone, and a
Keras run resumes exactly from a checkpoint that holds nothing but scratch's arrays.
"""

import keras
import numpy as np
import tensorflow as tf

from ports.keras.conv_vae import _layers as vae_layers
from ports.keras.conv_vae import assign_conv_vae, from_keras_conv_vae, to_keras_conv_vae
from ports.keras.dcgan import _layers as dcgan_layers
from ports.keras.dcgan import assign_dcgan, from_keras_dcgan, to_keras_dcgan
from scratch import conv_vae as CV
from scratch import dcgan as DC
from scratch import vae as V
from scratch.runs import TRAIN_NOISE
from scratch.train import DISC_NOISE
from scratch.train_conv import EVAL_CHUNK, ConvVAETrainer, DCGANTrainer

CONV = (2, 3, 1, 0)  # a convolution kernel: scratch's (PyTorch's) layout → Keras's


def adam_arrays(optimizer, named, prefix):
    """Keras Adam's iterations and moments in scratch/optim.py's layout; named: scratch name → (variable, axes or None)."""
    arrays = {f"{prefix}t": np.array(int(optimizer.iterations.numpy()), dtype=np.int64)}
    for name, (variable, axes) in named.items():
        index = optimizer._get_variable_index(variable)  # Keras keeps one momentum and one velocity per variable
        for ours, moments in (("m", optimizer._momentums), ("v", optimizer._velocities)):
            value = np.array(moments[index].numpy())
            arrays[f"{prefix}{ours}.{name}"] = value if axes is None else np.ascontiguousarray(value.transpose(np.argsort(axes)))
    return arrays


def load_adam_arrays(optimizer, named, arrays, prefix):
    """The inverse of adam_arrays: a scratch-layout Adam state into Keras's Adam."""
    optimizer.iterations.assign(int(arrays[f"{prefix}t"]))
    if int(arrays[f"{prefix}t"]) == 0:
        return
    for name, (variable, axes) in named.items():
        index = optimizer._get_variable_index(variable)
        for ours, moments in (("m", optimizer._momentums), ("v", optimizer._velocities)):
            value = np.asarray(arrays[f"{prefix}{ours}.{name}"])
            moments[index].assign(value if axes is None else value.transpose(axes))


def _decay(lr, lr_end, decay_steps):
    """scratch's exponential_decay for a Keras optimizer, which calls it with its update count k: lr·rate^k."""
    rate = (lr_end / lr) ** (1.0 / max(decay_steps - 1, 1))
    return keras.optimizers.schedules.ExponentialDecay(lr, 1, rate, staircase=True)


class KerasDCGANTrainer(DCGANTrainer):
    """ports/keras/dcgan.py's DCGAN keras.Model trained by its own train_step, fed scratch's batch and noise.

    One update of D, then one of G, per batch (keras-io's train_step): --disc-steps 1. The step runs in
    one tf.function traced once, as fit runs it.
    """

    IMPLEMENTATION, OPTIMIZER = "keras", "keras.optimizers.Adam"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.disc_steps != 1:
            raise ValueError(f"the Keras DCGAN's train_step updates D once a batch (keras-io's): --disc-steps 1, "
                             f"got {self.disc_steps}")

    def _build(self, params, stats):
        self.model = to_keras_dcgan(params, self.gan_config, stats, seed=self.seed, kind=self.kind)
        beta_1, beta_2 = self.BETAS
        adam = lambda: keras.optimizers.Adam(_decay(self.lr, self.lr_end, self.decay_steps), beta_1=beta_1,  # noqa: E731
                                             beta_2=beta_2, epsilon=1e-8)
        self.model.compile(d_optimizer=adam(), g_optimizer=adam())
        self._train_step = tf.function(lambda x, zd, zg: self.model.train_step(((x, zd, zg),)), autograph=False)

    def generate(self, z):
        return DC.to_pixels(np.asarray(self.model.generate(z)))  # (B, 1, 28, 28) in [0, 1], evaluation mode

    def discriminate(self, x):
        return np.asarray(self.model.discriminate(DC.from_pixels(x)))  # (B,)

    def train_step(self, step):
        self.current_step = step
        x_real, z_disc, z_gen = self.real_batch(step), self.noise(step, DISC_NOISE), self.noise(step, TRAIN_NOISE)
        self.model.reset_metrics()  # the logs are this batch's losses, not a running mean
        logs = self._train_step(*(tf.constant(a) for a in (x_real, z_disc, z_gen)))
        self.last_losses = (float(logs["d_loss"]), float(logs["g_loss"]))
        return self.last_losses[0]

    def _named(self, net):
        return {k: v for k, v in dcgan_layers(self.model).items() if k in DC.parameter_shapes(self.gan_config) and k.startswith(f"{net}.")}

    def _optimizers(self):
        return (("gen", self.model.g_optimizer), ("disc", self.model.d_optimizer))

    def state(self):
        params, stats = from_keras_dcgan(self.model)
        arrays = {**params, **stats}
        for net, optimizer in self._optimizers():
            arrays.update(adam_arrays(optimizer, self._named(net), f"optim.{net}."))
        return arrays

    def load_state(self, arrays):
        # into the model built already: its compiled step is kept (a new model would trace it anew, seconds)
        assign_dcgan(self.model, {name: arrays[name] for name in DC.parameter_shapes(self.gan_config)},
                     {name: arrays[name] for name in DC.init_stats(self.gan_config)})
        for net, optimizer in self._optimizers():
            load_adam_arrays(optimizer, self._named(net), arrays, f"optim.{net}.")


class KerasConvVAETrainer(ConvVAETrainer):
    """ports/keras/conv_vae.py's ConvVAE keras.Model trained by its own train_step (what fit runs), with Keras's
    Adam and the ε its Sampling layer draws."""

    IMPLEMENTATION, OPTIMIZER = "keras", "keras.optimizers.Adam"

    def _build(self, params):
        self.model = to_keras_conv_vae(params, self.vae_config, seed=self.seed)
        self.model.compile(optimizer=keras.optimizers.Adam(learning_rate=self.lr, epsilon=1e-8))
        self.model.optimizer.build(self.model.trainable_variables)
        self._train_step = tf.function(lambda x: self.model.train_step((x,)), autograph=False)

    def forward(self, x, eps):
        """VAEOutput of NumPy arrays (elbo, reconstruction, kl) at the given ε, EVAL_CHUNK images at a time."""
        # eagerly: a compiled forward would be traced once per chunk size, which costs more than it saves here
        fields = [[np.asarray(t) for t in self.model(x[i:i + EVAL_CHUNK], eps=eps[i:i + EVAL_CHUNK])[1:4]]
                  for i in range(0, len(x), EVAL_CHUNK)]
        elbo, reconstruction, kl = (np.concatenate(f) for f in zip(*fields))
        return V.VAEOutput(-float(np.mean(elbo)), elbo, reconstruction, kl, None, None, None, None)

    def train_step(self, step):
        # the Sampling layer's keras.random draws start from (seed, step): the step's noise, whatever ran before
        self.model.sampling.seed_generator.state.assign(np.array([self.seed, step], dtype=np.int64))
        return super().train_step(step)

    def _step(self, x, eps):
        # eps is not used: the model's Sampling layer draws the noise, as it does under fit
        self.model.reset_metrics()
        return float(self._train_step(tf.constant(x))["loss"])

    def _named(self):
        named = {}
        for w, (layer, conv) in vae_layers(self.model).items():
            named[w], named[w.replace(".W", ".b")] = (layer.kernel, CONV if conv else None), (layer.bias, None)
        return named

    def state(self):
        return {**from_keras_conv_vae(self.model), **adam_arrays(self.model.optimizer, self._named(), "optim.")}

    def load_state(self, arrays):
        assign_conv_vae(self.model, {name: arrays[name] for name in CV.parameter_shapes(self.vae_config)})
        load_adam_arrays(self.model.optimizer, self._named(), arrays, "optim.")


CONV_TRAINERS = {"gan:conv": KerasDCGANTrainer, "vae:conv": KerasConvVAETrainer}
