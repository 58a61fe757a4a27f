"""What `python -m ports.tensorflow train MODEL` trains: scratch/train.py with TensorFlow doing
the work — the seed's §5.2: a tf.Module VAE, a tf.GradientTape step compiled by tf.function.

Same initial weights, batches and noise as scratch (scratch/runs.py); the optimizer is
ports/tensorflow/optim.py's Adam, which equals scratch's and PyTorch's step for step.
Checkpoints are in the scratch layout, optimizer state included.
"""

import numpy as np
import tensorflow as tf

from ports.tensorflow.optim import Adam
from ports.tensorflow.vae import from_tf_vae, to_tf_vae
from scratch import vae as V
from scratch.runs import batch_for_step, noise_for_step
from scratch.train import evaluate_vae


class TensorFlowVAETrainer:
    def __init__(self, config, x_train, x_test, seed, batch_size=128, lr=1e-3):
        self.vae_config, self.x_train, self.x_test = config, x_train, x_test
        self.seed, self.batch_size, self.lr = seed, batch_size, lr
        self._build(V.init_vae(config, np.random.default_rng(seed), dtype=x_train.dtype))

    def _build(self, params):
        self.vae = to_tf_vae(params, self.vae_config)
        self.optimizer = Adam(self.vae.params, lr=self.lr)

        @tf.function(reduce_retracing=True)
        def step(x, eps):
            with tf.GradientTape() as tape:
                loss = self.vae.elbo(x, eps).loss
            grads = dict(zip(self.vae.params, tape.gradient(loss, list(self.vae.params.values()))))
            self.optimizer.apply(grads, self.vae.params)
            return loss

        self._step = step

    def forward(self, x, eps):
        out = self.vae.elbo(tf.constant(x), tf.constant(eps))
        return V.VAEOutput(float(out.loss), *(t.numpy() for t in (out.elbo, out.reconstruction, out.kl)), None, None, None, None)

    def train_step(self, step):
        x = self.x_train[batch_for_step(step, len(self.x_train), self.batch_size, self.seed)]  # (B, D)
        eps = noise_for_step(step, self.seed, (len(x), self.vae_config.z_dim), x.dtype)  # (B, Z)
        return float(self._step(tf.constant(x), tf.constant(eps)))

    def evaluate(self):
        return {"train": evaluate_vae(self.forward, self.x_train, self.vae_config, self.seed),
                "test": evaluate_vae(self.forward, self.x_test, self.vae_config, self.seed)}

    def state(self):
        optim = {f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}
        return {**from_tf_vae(self.vae), **optim}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in V.parameter_shapes(self.vae_config)})
        self.optimizer.load_state_dict({k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")})

    def config(self):
        return {"model": "vae", "implementation": "tensorflow", **self.vae_config._asdict(),
                "batch_size": self.batch_size, "lr": self.lr, "optimizer": "adam (ports/tensorflow/optim.py)"}


TRAINERS = {"vae": TensorFlowVAETrainer}
