"""What `python -m ports.tensorflow train MODEL` trains: scratch/train.py with TensorFlow doing
the work — the seed's §5.2: a tf.Module VAE, a tf.GradientTape step compiled by tf.function.

Same initial weights, batches and noise as scratch (scratch/runs.py); the optimizer is
ports/tensorflow/optim.py's Adam, which equals scratch's and PyTorch's step for step.
Checkpoints are in the scratch layout, optimizer state included.
"""

import tensorflow as tf

from ports.tensorflow.optim import Adam
from ports.tensorflow.vae import from_tf_vae, to_tf_vae
from scratch import vae as V
from scratch.train import VAETrainer, split_optimizer_state


class TensorFlowVAETrainer(VAETrainer):
    IMPLEMENTATION, OPTIMIZER = "tensorflow", "adam (ports/tensorflow/optim.py)"

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

        self._compiled_step = step

    def forward(self, x, eps):
        out = self.vae.elbo(tf.constant(x), tf.constant(eps))
        return V.VAEOutput(float(out.loss), *(t.numpy() for t in (out.elbo, out.reconstruction, out.kl)), None, None, None, None)

    def _step(self, x, eps):
        return float(self._compiled_step(tf.constant(x), tf.constant(eps)))

    def state(self):
        optim = {f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}
        return {**from_tf_vae(self.vae), **optim}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in V.parameter_shapes(self.vae_config)})
        self.optimizer.load_state_dict(split_optimizer_state(arrays))


TRAINERS = {"vae": TensorFlowVAETrainer}
