"""What `python -m ports.tensorflow train MODEL` trains: scratch/train.py with TensorFlow doing
the work — the seed's §5.2: a tf.Module VAE, a tf.GradientTape step compiled by tf.function.

Same initial weights, batches and noise as scratch (scratch/runs.py); the optimizer is
ports/tensorflow/optim.py's Adam, which equals scratch's and PyTorch's step for step.
Checkpoints are in the scratch layout, optimizer state included.
"""

import tensorflow as tf

from ports.tensorflow.gan import from_tf_gan, to_tf_gan
from ports.tensorflow.gpt import from_tf_gpt, to_tf_gpt
from ports.tensorflow.optim import Adam, AdamW
from ports.tensorflow.transformer import _cross_entropy, dropout_masks, from_tf_transformer, to_tf_transformer
from ports.tensorflow.vae import from_tf_vae, to_tf_vae
from scratch import encoder_decoder as M
from scratch import gan as G
from scratch import language_model as LM
from scratch import text as X
from scratch import vae as V
from scratch.gpt import parameter_shapes as gpt_parameter_shapes
from scratch.language_model import GPTTrainer
from scratch.train import GANTrainer, VAETrainer, split_optimizer_state
from scratch.translation import TransformerTrainer


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


class TensorFlowGANTrainer(GANTrainer):
    """A tf.Module GAN with one tf.function-compiled step per player and ports/tensorflow/optim.py's Adam."""

    IMPLEMENTATION, OPTIMIZER = "tensorflow", "adam (ports/tensorflow/optim.py)"

    def _build(self, params):
        self.gan = to_tf_gan(params, self.gan_config)
        self.lr_variable = tf.Variable(self.lr, dtype=tf.float64, trainable=False, name="lr")
        gen = {k: v for k, v in self.gan.params.items() if k.startswith("gen.")}
        disc = {k: v for k, v in self.gan.params.items() if k.startswith("disc.")}
        self.gen_optimizer = Adam(gen, lr=self.lr_variable, betas=self.BETAS, name="adam_gen")
        self.disc_optimizer = Adam(disc, lr=self.lr_variable, betas=self.BETAS, name="adam_disc")
        kind = self.kind
        self._compiled_disc_step = tf.function(lambda x, z: self.gan.discriminator_train_step(x, z, self.disc_optimizer))
        self._compiled_gen_step = tf.function(lambda z: self.gan.generator_train_step(z, self.gen_optimizer, kind))

    def generate(self, z):
        return self.gan.generate(tf.constant(z)).numpy()

    def discriminate(self, x):
        return self.gan.discriminate(tf.constant(x)).numpy()

    def _disc_step(self, x_real, z):
        self.lr_variable.assign(self.schedule(self.current_step))
        return float(self._compiled_disc_step(tf.constant(x_real), tf.constant(z)))

    def _gen_step(self, z):
        self.lr_variable.assign(self.schedule(self.current_step))
        return float(self._compiled_gen_step(tf.constant(z)))

    def state(self):
        return {**from_tf_gan(self.gan), **{f"optim.gen.{k}": v for k, v in self.gen_optimizer.state_dict().items()},
                **{f"optim.disc.{k}": v for k, v in self.disc_optimizer.state_dict().items()}}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in G.parameter_shapes(self.gan_config)})
        self.gen_optimizer.load_state_dict(split_optimizer_state(arrays, "optim.gen."))
        self.disc_optimizer.load_state_dict(split_optimizer_state(arrays, "optim.disc."))


class TensorFlowTransformerTrainer(TransformerTrainer):
    """The `Transformer` tf.Module with a tf.function-compiled step and ports/tensorflow/optim.py's Adam.

    Starts from scratch's weights, trains on scratch's batches with the same schedule and loss.
    Dropout, when on, uses scratch's very masks: drawn with NumPy from the step's generator
    (`dropout_masks`) and handed to the compiled step as tensors, so even a run with dropout
    follows scratch's trajectory, and a resumed run draws what an unbroken one draws.
    """

    IMPLEMENTATION, OPTIMIZER = "tensorflow", "adam (ports/tensorflow/optim.py)"

    def _build(self, params):
        self.model = to_tf_transformer(params, self.model_config)
        self.lr_variable = tf.Variable(self.schedule(1), dtype=tf.float64, trainable=False, name="lr")
        self.optimizer = Adam(self.model.params, lr=self.lr_variable, betas=self.BETAS, eps=self.EPS)
        label_smoothing, config = self.label_smoothing, self.model_config
        # one trace for every batch: B, S and T left open; as many dropout masks as scratch draws, or none
        ids = tf.TensorSpec((None, None), tf.int64)
        n_masks = (2 + 5 * config.num_layers) if config.dropout else 0
        mask = tf.TensorSpec((None, None, config.d_model), tf.as_dtype(self.dtype))

        # (autograph off: the step has no tensor-dependent Python control flow, and converting it is slow)
        @tf.function(input_signature=[ids, ids, ids, (mask,) * n_masks], autograph=False)
        def step(src, tgt_in, tgt_out, masks):
            with tf.GradientTape() as tape:
                logits = self.model(src, tgt_in, masks)  # (B, T, V)
                targets = tf.reshape(tgt_out, (-1,))
                loss = _cross_entropy(tf.reshape(logits, (-1, logits.shape[-1])), targets,
                                      tf.not_equal(targets, X.PAD_ID), label_smoothing)
            params = self.model.params
            grads = dict(zip(params, tape.gradient(loss, list(params.values()))))
            self.optimizer.apply({k: tf.convert_to_tensor(g) for k, g in grads.items()}, params)
            return loss

        self._compiled_step = step

    def _step(self, src, tgt_in, tgt_out, step):
        self.lr_variable.assign(self.schedule(step))
        masks = dropout_masks(self.dropout_rng(step), self.model_config, *src.shape, tgt_in.shape[1], self.dtype)
        return float(self._compiled_step(tf.constant(src, tf.int64), tf.constant(tgt_in, tf.int64),
                                         tf.constant(tgt_out, tf.int64), tuple(tf.constant(m) for m in masks)))

    def logits(self, src, tgt_in):
        return self.model(src, tgt_in).numpy()

    def translate_ids(self, src):
        return self.model.greedy_decode(src).numpy()

    def numpy_params(self):
        return from_tf_transformer(self.model)

    def state(self):
        optim = {f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}
        return {**self.numpy_params(), **self.vocab_arrays(), **optim}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in M.parameter_shapes(self.model_config)})
        self.optimizer.load_state_dict(split_optimizer_state(arrays))


class TensorFlowGPTTrainer(GPTTrainer):
    """ports/tensorflow/gpt.py's GPT tf.Module with a tf.function-compiled step and ports/tensorflow/optim.py's
    AdamW (scratch's step for step: the matrices and embeddings decayed, the rest not).

    Starts from scratch's weights and trains on scratch's batches with scratch's loss (<pad> targets
    ignored) at scratch's rate, so its trajectory is scratch's; checkpoints in the scratch layout.
    """

    IMPLEMENTATION, OPTIMIZER = "tensorflow", "adamw (ports/tensorflow/optim.py)"

    def _build(self, params):
        self.model = to_tf_gpt(params, self.model_config)
        self.lr_variable = tf.Variable(self.schedule(1), dtype=tf.float64, trainable=False, name="lr")
        self.optimizer = AdamW(self.model.params, lr=self.lr_variable, betas=self.BETAS, eps=self.EPS,
                               weight_decay=self.weight_decay, decay=self.decay_names)

        # one trace for every batch: B and T left open (names differ in length); autograph off, as nothing
        # in the step branches on a tensor
        @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int64)], autograph=False)
        def step(tokens):
            with tf.GradientTape() as tape:
                loss = self.model.loss(tokens, LM.PAD_ID)
            params = self.model.params
            grads = dict(zip(params, tape.gradient(loss, list(params.values()))))
            self.optimizer.apply({k: tf.convert_to_tensor(g) for k, g in grads.items()}, params)
            return loss

        self._compiled_step = step

    def _step(self, tokens, step):
        self.lr_variable.assign(self.schedule(step))
        return float(self._compiled_step(tf.constant(tokens, tf.int64)))

    def logits(self, inputs):
        return self.model(inputs).numpy()

    def numpy_params(self):
        return from_tf_gpt(self.model)

    def state(self):
        optim = {f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}
        return {**self.numpy_params(), **self.extra_state(), **optim}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in gpt_parameter_shapes(self.model_config)})
        self.optimizer.load_state_dict(split_optimizer_state(arrays))


TRAINERS = {"vae": TensorFlowVAETrainer, "gan": TensorFlowGANTrainer, "transformer": TensorFlowTransformerTrainer,
            "gpt": TensorFlowGPTTrainer}
