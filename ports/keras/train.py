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

from ports.keras.vae import from_keras_vae, to_keras_vae
from scratch import vae as V
from scratch.train import VAETrainer


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


TRAINERS = {"vae": KerasVAETrainer}
