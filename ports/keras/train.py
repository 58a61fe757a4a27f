"""What `python -m ports.keras train MODEL` trains: a Keras 3 model with its custom `train_step`,
the one `model.fit` calls, on scratch/runs.py's batches.

It starts from scratch's initial weights; its optimizer is Keras's own Adam and its noise comes
from the model's `Sampling` layer (keras.random with a seed), so its trajectory is its own, not
scratch's: the torch and tensorflow trainers are the ones checked step for step. Checkpoints keep
the weights in the scratch layout, plus Keras's optimizer variables and sampling seed, so a
run resumes exactly.
"""

import keras
import numpy as np

from ports.keras.gan import from_keras_gan, to_keras_gan
from ports.keras.vae import from_keras_vae, to_keras_vae
from scratch import gan as G
from scratch import vae as V
from scratch.train import GANTrainer, VAETrainer


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


TRAINERS = {"vae": KerasVAETrainer, "gan": KerasGANTrainer}
