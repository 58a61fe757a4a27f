"""What `python -m ports.tensorflow train gan|vae --data mnist --arch conv` trains: scratch/train_conv.py
with TensorFlow doing the work, as ports/tensorflow/train.py does for the MLPs.

The DCGAN and the conv VAE are tf.Modules (ports/tensorflow/dcgan.py, conv_vae.py), each training step
a GradientTape compiled by tf.function, the optimizer ports/tensorflow/optim.py's Adam (scratch's and
PyTorch's step for step). Same initial weights, batches and noise as scratch (scratch/runs.py), so the
trajectory is scratch's; checkpoints in the scratch layout, running statistics and Adam's moments
included, so a run resumes exactly and a checkpoint moves between implementations.
"""

import numpy as np
import tensorflow as tf

from ports.tensorflow.conv_vae import from_tf_conv_vae, to_tf_conv_vae, train_step
from ports.tensorflow.dcgan import from_tf_dcgan, to_tf_dcgan
from ports.tensorflow.optim import Adam
from scratch import dcgan as DC
from scratch import vae as V
from scratch.train import split_optimizer_state
from scratch.train_conv import EVAL_CHUNK, ConvVAETrainer, DCGANTrainer


class TensorFlowDCGANTrainer(DCGANTrainer):
    """The `DCGAN` tf.Module with one tf.function-compiled step per player and ports/tensorflow/optim.py's Adam.

    The training steps move the running statistics (non-trainable tf.Variables) after each of their
    forwards, in scratch's order; `generate` and `discriminate` use them (evaluation mode).
    """

    IMPLEMENTATION, OPTIMIZER = "tensorflow", "adam (ports/tensorflow/optim.py)"

    def _build(self, params, stats):
        self.gan = to_tf_dcgan(params, self.gan_config, stats)
        self.lr_variable = tf.Variable(self.lr, dtype=tf.float64, trainable=False, name="lr")
        gen = {k: v for k, v in self.gan.params.items() if k.startswith("gen.")}
        disc = {k: v for k, v in self.gan.params.items() if k.startswith("disc.")}
        self.gen_optimizer = Adam(gen, lr=self.lr_variable, betas=self.BETAS, name="adam_gen")
        self.disc_optimizer = Adam(disc, lr=self.lr_variable, betas=self.BETAS, name="adam_disc")
        kind = self.kind
        # (autograph off: the steps have no tensor-dependent Python control flow)
        self._compiled_disc_step = tf.function(lambda x, z: self.gan.discriminator_train_step(x, z, self.disc_optimizer),
                                               autograph=False)
        self._compiled_gen_step = tf.function(lambda z: self.gan.generator_train_step(z, self.gen_optimizer, kind),
                                              autograph=False)

    def generate(self, z):
        return DC.to_pixels(self.gan.generate(tf.constant(z)).numpy())  # (B, 1, 28, 28) in [0, 1]

    def discriminate(self, x):
        return self.gan.discriminate(tf.constant(DC.from_pixels(x))).numpy()  # (B,)

    def _disc_step(self, x_real, z):
        self.lr_variable.assign(self.schedule(self.current_step))
        return float(self._compiled_disc_step(tf.constant(x_real), tf.constant(z)))

    def _gen_step(self, z):
        self.lr_variable.assign(self.schedule(self.current_step))
        return float(self._compiled_gen_step(tf.constant(z)))

    def state(self):
        params, stats = from_tf_dcgan(self.gan)
        return {**params, **stats, **{f"optim.gen.{k}": v for k, v in self.gen_optimizer.state_dict().items()},
                **{f"optim.disc.{k}": v for k, v in self.disc_optimizer.state_dict().items()}}

    def load_state(self, arrays):
        # into the variables built already: the compiled steps are kept (new ones would be traced anew, seconds)
        for name, variable in {**self.gan.params, **self.gan.stats}.items():
            variable.assign(arrays[name])
        self.gen_optimizer.load_state_dict(split_optimizer_state(arrays, "optim.gen."))
        self.disc_optimizer.load_state_dict(split_optimizer_state(arrays, "optim.disc."))


class TensorFlowConvVAETrainer(ConvVAETrainer):
    """The `ConvVAE` tf.Module trained by ports/tensorflow/conv_vae.py's `train_step` (the seed's §5.2),
    compiled by tf.function, with ports/tensorflow/optim.py's Adam."""

    IMPLEMENTATION, OPTIMIZER = "tensorflow", "adam (ports/tensorflow/optim.py)"

    def _build(self, params):
        self.vae = to_tf_conv_vae(params, self.vae_config)
        self.optimizer = Adam(self.vae.params, lr=self.lr)
        self._compiled_step = tf.function(lambda x, eps: train_step(self.vae, x, eps, self.optimizer), autograph=False)

    def forward(self, x, eps):
        """VAEOutput of NumPy arrays (elbo, reconstruction, kl), EVAL_CHUNK images at a time."""
        # eagerly: a compiled forward would be traced once per chunk size, which costs more than it saves here
        fields = [[t.numpy() for t in self.vae.elbo(tf.constant(x[i:i + EVAL_CHUNK]), tf.constant(eps[i:i + EVAL_CHUNK]))[1:4]]
                  for i in range(0, len(x), EVAL_CHUNK)]
        elbo, reconstruction, kl = (np.concatenate(f) for f in zip(*fields))
        return V.VAEOutput(-float(np.mean(elbo)), elbo, reconstruction, kl, None, None, None, None)

    def _step(self, x, eps):
        return float(self._compiled_step(tf.constant(x), tf.constant(eps)))

    def state(self):
        return {**from_tf_conv_vae(self.vae), **{f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}}

    def load_state(self, arrays):
        for name, variable in self.vae.params.items():  # into the variables built already: the compiled step is kept
            variable.assign(arrays[name])
        self.optimizer.load_state_dict(split_optimizer_state(arrays))


CONV_TRAINERS = {"gan:conv": TensorFlowDCGANTrainer, "vae:conv": TensorFlowConvVAETrainer}
