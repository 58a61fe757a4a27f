"""What `python -m ports.tensorflow train diffusion --data ring|grid|mnist` trains: scratch/train_diffusion.py
(and for the digits scratch/guidance.py) with TensorFlow doing the work, a tf.Module denoiser and a
tf.GradientTape step compiled by tf.function.

Same initial weights, batches, steps t and noise ε as scratch (scratch/train_diffusion.py picks all
three from the step number; on the digits also the rows whose word is dropped to ∅); the optimizer is
ports/tensorflow/optim.py's Adam, which equals scratch's and PyTorch's step for step, its rate a
tf.Variable assigned the cosine schedule's value before each step. Checkpoints are in the scratch
layout, Adam's moments included, so runs resume across implementations. The mixtures train
ports/tensorflow/diffusion.py's MLPDenoiser, the digits ports/tensorflow/unet.py's UNet; the guided
digit samples are scratch's guided DDIM (scratch/guidance.py) on the weights converted back.
"""

import numpy as np
import tensorflow as tf

from ports.tensorflow.diffusion import _eps_loss, _q_sample, from_tf_mlp_denoiser, to_tf_mlp_denoiser
from ports.tensorflow.optim import Adam
from ports.tensorflow.unet import from_tf_unet, to_tf_unet
from scratch import diffusion as Df
from scratch import unet as U
from scratch.guidance import GuidedDigitTrainer, in_chunks
from scratch.runs import RunError
from scratch.train import split_optimizer_state
from scratch.train_diffusion import DiffusionTrainer

# The denoisers this port has: the scratch Denoiser → (to a tf.Module, back to the scratch layout, takes word ids?)
TF_DENOISERS = {Df.MLP_DENOISER: (to_tf_mlp_denoiser, from_tf_mlp_denoiser, False),
                U.UNET_DENOISER: (to_tf_unet, from_tf_unet, True)}


class TensorFlowDenoiserSteps:
    """The TensorFlow half of a diffusion trainer, mixed in before a scratch trainer.

    One step is Algorithm 1 of Ho et al. (2020) on tensors: x_t = q_sample(x_0, t, ε) with scratch's
    ᾱ (float64, cast per example to the data's dtype), ε̂ = module(x_t, t[, cond]), the mean of
    (ε̂ − ε)², the tape's gradients, Adam's step; all of it one tf.function.
    """

    IMPLEMENTATION, OPTIMIZER = "tensorflow", "adam (ports/tensorflow/optim.py)"

    def _converters(self):
        if self.denoiser not in TF_DENOISERS:
            raise ValueError(f"the TensorFlow port has no module for this denoiser: it has the MLP of "
                             f"ports/tensorflow/diffusion.py and the U-Net of ports/tensorflow/unet.py, got {self.denoiser_config!r}")
        return TF_DENOISERS[self.denoiser]

    def _build(self, params):
        to_tf, _, conditional = self._converters()
        self.module = to_tf(params, self.denoiser_config)
        self.lr_variable = tf.Variable(self.lr, dtype=tf.float64, trainable=False, name="lr")
        self.optimizer = Adam(self.module.params, lr=self.lr_variable)
        alphas_cumprod = tf.constant(self.alphas_cumprod)  # (T,) float64
        data = tf.TensorSpec((None, *self.dataset.sample_shape), tf.as_dtype(self.dtype))
        ids = tf.TensorSpec((None,), tf.int64)
        words = [ids] if conditional else []  # the U-Net's cond: (B,) word ids; the MLP takes none

        # one trace for every batch (B left open); autograph off: nothing in the step branches on a tensor
        @tf.function(input_signature=[data, ids, data, *words], autograph=False)
        def step(x0, t, eps, *cond):
            x_t = _q_sample(x0, t, eps, alphas_cumprod)  # (B, ...): no gradient reaches the data
            with tf.GradientTape() as tape:
                loss = _eps_loss(self.module(x_t, t, *cond), eps)
            params = self.module.params
            # the word table's gradient comes sparse (tf.gather's IndexedSlices): Adam's moments want it dense
            grads = {name: tf.convert_to_tensor(g) for name, g in zip(params, tape.gradient(loss, list(params.values())))}
            self.optimizer.apply(grads, params)
            return loss

        @tf.function(input_signature=[data, ids, *words], autograph=False)
        def eps_pred(x_t, t, *cond):
            return self.module(x_t, t, *cond)

        self._compiled_step, self._compiled_eps = step, eps_pred

    def _cond(self, cond, batch):
        """The compiled functions' cond: () for the MLP, which refuses one; for the U-Net the (B,) int64 word ids,
        None standing for ∅ on every row (U.NULL)."""
        if not self._converters()[2]:
            if cond is not None:
                raise ValueError(f"the MLP denoiser is unconditional: cond must be None, got {type(cond).__name__}")
            return ()
        cond = np.full(batch, U.NULL, dtype=np.int64) if cond is None else np.asarray(cond)
        if cond.dtype.kind not in "iu":
            raise TypeError(f"cond must be integer word ids (0 … 9, or U.NULL = {U.NULL} for ∅), got dtype {cond.dtype}")
        if cond.shape != (batch,):
            raise ValueError(f"cond must have shape ({batch},) (one word per image), got shape {cond.shape}")
        return (tf.constant(cond.astype(np.int64)),)

    def _eps(self, x_t, t, cond):
        return self._compiled_eps(tf.constant(x_t), tf.constant(np.asarray(t, np.int64)), *self._cond(cond, len(x_t))).numpy()

    def _step(self, x0, t, eps, cond):
        self.lr_variable.assign(self.lr_schedule(self.current_step))  # what scratch's Adam reads at this step
        return float(self._compiled_step(tf.constant(x0), tf.constant(np.asarray(t, np.int64)), tf.constant(eps),
                                         *self._cond(cond, len(x0))))

    def state(self):
        optim = {f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}
        return {**self._converters()[1](self.module), **optim}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in self.denoiser.shapes(self.denoiser_config)})
        self.optimizer.load_state_dict(split_optimizer_state(arrays))


class TensorFlowDiffusionTrainer(TensorFlowDenoiserSteps, DiffusionTrainer):
    """The mixtures (--data ring, grid): ports/tensorflow/diffusion.py's MLPDenoiser with ports/tensorflow/optim.py's Adam."""

    def __init__(self, data, *args, **kwargs):
        if data == "mnist":  # the digits train with guidance, their words dropped to ∅ on a share of the rows
            raise RunError("--data mnist: TensorFlowDiffusionTrainer trains the mixtures' MLP (--data ring, grid); "
                           "the word-guided digit U-Net is TensorFlowGuidedDigitTrainer (tf_diffusion_trainer picks it)")
        super().__init__(data, *args, **kwargs)


class TensorFlowGuidedDigitTrainer(TensorFlowDenoiserSteps, GuidedDigitTrainer):
    """The digits (--data mnist): scratch/guidance.py's guided trainer, its batches and dropped words, with
    ports/tensorflow/unet.py's UNet and ports/tensorflow/optim.py's Adam. `params` is the module's weights in
    the scratch layout: scratch's guided DDIM draws the samples from them (digit_samples)."""

    @property
    def params(self):
        return from_tf_unet(self.module)

    def _eps(self, x_t, t, cond):
        return in_chunks(super()._eps, x_t, t, cond)  # CHUNK images a forward, as scratch's


def tf_diffusion_trainer(data, *args, **kwargs):
    """The trainer of --data: TensorFlowGuidedDigitTrainer for mnist, TensorFlowDiffusionTrainer for the mixtures."""
    return (TensorFlowGuidedDigitTrainer if data == "mnist" else TensorFlowDiffusionTrainer)(data, *args, **kwargs)


DIFFUSION_TRAINERS = {"diffusion": tf_diffusion_trainer}
