"""What `python -m scratch train gan|vae --data mnist --arch conv` trains: the DCGAN and the conv VAE.

Not math: the trainers of scratch/train.py with the convolutional networks of scratch/dcgan.py
and scratch/conv_vae.py in place of the MLPs. Batches and noise come from the step number alone
(scratch/runs.py), and the checkpoint holds everything a step reads (parameters, batch norm's
running statistics, both Adams' moments), so a resumed run is exact.

NumPy's BLAS runs on one thread inside these trainers. The convolutions' weight gradients are
products of a tall matrix with a narrow one, (K, B·L) · (B·L, C) with B·L in the thousands and
K, C ≤ 64: OpenBLAS split across two threads took 0.5 s for one such product on this machine
(busy with other work), one thread 0.3 ms, and a whole DCGAN step went from 2 s to 0.3 s.
Every evaluation records `process_cpu_s`, the CPU seconds the process has used so far: on one
BLAS thread that is the wall time the run takes on an idle core, whatever else the machine runs.
"""

import os
import time

import numpy as np

from scratch import conv_vae as CV
from scratch import dcgan as DC
from scratch import vae as V
from scratch.optim import Adam, exponential_decay
from scratch.runs import EVAL_NOISE, RunError, _atomic_write, batch_for_step, blas_threads, noise_for_step, run_training
from scratch.train import (EVAL_SAMPLES, GANTrainer, VAETrainer, evaluate_vae, load_gan_data, load_vae_data,
                           split_optimizer_state)

IMAGE_SHAPE = (1, 28, 28)


def single_threaded_blas():
    """A context with NumPy's BLAS on one thread (scratch/runs.py's blas_threads)."""
    return blas_threads(1)


# ----------------------------------------------------------------------------------------------
# DCGAN
# ----------------------------------------------------------------------------------------------


class DCGANTrainer(GANTrainer):
    """GANTrainer's loop (disc_steps updates of D, then one of G; Adam with β1 = 0.5 on one schedule)
    for the DCGAN. Images enter as pixels in [0, 1]; D trains on 2x − 1, G's tanh output leaves as
    (G(z) + 1) / 2. `generate`, `discriminate` and `samples` run in evaluation mode (running statistics)."""

    def __init__(self, config, data, seed, decay_steps=20000, batch_size=64, lr=2e-4, lr_end=2e-4, disc_steps=1,
                 kind="non_saturating", dtype=np.float32):
        if data != "mnist":
            raise RunError(f"the DCGAN (--arch conv) trains on 28×28 images: --data mnist, got {data!r}")
        if kind not in ("minimax", "non_saturating"):
            raise ValueError(f"kind must be 'minimax' or 'non_saturating', got {kind!r}")
        self.gan_config, self.data, self.seed, self.decay_steps = config, data, seed, decay_steps
        self.batch_size, self.lr, self.lr_end, self.disc_steps, self.kind = batch_size, lr, lr_end, disc_steps, kind
        self.dtype = np.dtype(dtype)
        x_train, x_test = load_gan_data(data, self.dtype)
        self.x_train, self.x_test = x_train.reshape(-1, *IMAGE_SHAPE), x_test.reshape(-1, *IMAGE_SHAPE)  # pixels
        self.data_scale = 1.0
        self.schedule = exponential_decay(lr, lr_end, decay_steps)
        rng = np.random.default_rng(seed)
        self._build(DC.init_dcgan(config, rng, self.dtype), DC.init_stats(config, self.dtype))

    def real_batch(self, update):
        index = batch_for_step(update, len(self.x_train), self.batch_size, self.seed, drop_last=True)
        return DC.from_pixels(self.x_train[index])  # (B, 1, 28, 28) in [−1, 1]

    def train_step(self, step):
        with single_threaded_blas():
            return super().train_step(step)

    def evaluate(self):
        with single_threaded_blas():
            return {**super().evaluate(), "process_cpu_s": time.process_time()}

    def config(self):
        return {**super().config(), "arch": "conv"}

    def samples(self, n=1000):
        """n images (n, 1, 28, 28) in [0, 1] from fixed evaluation noise, G in evaluation mode."""
        return self.generate(self.noise(0, EVAL_NOISE, n))


class ScratchDCGANTrainer(DCGANTrainer):
    """The NumPy DCGAN with scratch/optim.py's Adam, one per player."""

    IMPLEMENTATION, OPTIMIZER = "scratch", "adam"

    def _build(self, params, stats):
        self.params, self.stats = params, stats
        self.gen = {k: v for k, v in params.items() if k.startswith("gen.")}  # the same arrays, G's share
        self.disc = {k: v for k, v in params.items() if k.startswith("disc.")}
        self.gen_optimizer = Adam(self.schedule, self.BETAS)
        self.disc_optimizer = Adam(self.disc_lr, self.BETAS)

    def generate(self, z):
        with single_threaded_blas():
            return DC.to_pixels(DC.generator_forward(z, self.params, self.gan_config, self.stats)[0])

    def discriminate(self, x):
        return DC.discriminator_forward(DC.from_pixels(x), self.params, self.gan_config, self.stats)[0]

    def _disc_step(self, x_real, z):
        loss, grads, self.stats = DC.discriminator_step(x_real, z, self.params, self.stats, self.gan_config)
        self.disc_optimizer.step(self.disc, grads)
        return loss

    def _gen_step(self, z):
        loss, grads, self.stats = DC.generator_step(z, self.params, self.stats, self.gan_config, self.kind)
        self.gen_optimizer.step(self.gen, grads)
        return loss

    def state(self):
        return {**self.params, **self.stats, **{f"optim.gen.{k}": v for k, v in self.gen_optimizer.state_dict().items()},
                **{f"optim.disc.{k}": v for k, v in self.disc_optimizer.state_dict().items()}}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in DC.parameter_shapes(self.gan_config)},
                    {name: arrays[name] for name in DC.init_stats(self.gan_config)})
        self.gen_optimizer.load_state_dict(split_optimizer_state(arrays, "optim.gen."))
        self.disc_optimizer.load_state_dict(split_optimizer_state(arrays, "optim.disc."))


def dcgan_config_from_args(args):
    return DC.DCGANConfig(z_dim=args.z_dim, gen_width=args.width, disc_width=args.width)


def train_dcgan(args, make_trainer=ScratchDCGANTrainer, make_bar=None):
    """Train the DCGAN as the command line asks; write OUT/samples.npy, 1,000 images (1000, 28, 28) in [0, 1]."""
    config = dcgan_config_from_args(args)
    trainer = make_trainer(config, args.data, args.seed, args.decay_steps, batch_size=args.batch_size, lr=args.lr,
                           lr_end=args.lr_end, disc_steps=args.disc_steps, kind=args.loss, dtype=np.dtype(args.dtype))
    metrics = run_training(trainer, args.out, args.steps, args.seed, args.eval_every, resume=args.resume,
                           overwrite=getattr(args, "overwrite", False), make_bar=make_bar)
    samples = trainer.samples(1000).reshape(1000, 28, 28)  # (1000, 28, 28)
    _atomic_write(os.path.join(args.out, "samples.npy"), lambda f: np.save(f, samples))
    return metrics


# ----------------------------------------------------------------------------------------------
# The convolutional VAE
# ----------------------------------------------------------------------------------------------

EVAL_CHUNK = 250  # images per forward when evaluating
EVAL_TRAIN_EVERY = 4  # the train-set ELBO is estimated on every 4th training image: 1,000, 100 of each digit


class ConvVAETrainer(VAETrainer):
    """VAETrainer for the conv VAE: images (N, 1, 28, 28); the test ELBO on all 1,000 test images at every
    evaluation (EVAL_SAMPLES reparameterised draws each), the train ELBO on 1,000 of the training images
    (one draw each: a monitor, not a score). Forwards run EVAL_CHUNK images at a time, to bound im2col's memory."""

    TEST_SAMPLES, TEST_EVERY = EVAL_SAMPLES, 1  # every test image, EVAL_SAMPLES draws each (checks use fewer)

    def __init__(self, config, x_train, x_test, seed, batch_size=128, lr=1e-3):
        self.vae_config, self.seed, self.batch_size, self.lr = config, seed, batch_size, lr
        self.x_train, self.x_test = x_train.reshape(-1, *IMAGE_SHAPE), x_test.reshape(-1, *IMAGE_SHAPE)
        self._build(CV.init_conv_vae(config, np.random.default_rng(seed), dtype=self.x_train.dtype))

    def train_step(self, step):
        with single_threaded_blas():
            return super().train_step(step)

    def evaluate(self):
        with single_threaded_blas():
            return {"process_cpu_s": time.process_time(), "train": evaluate_vae(self.forward, self.x_train[::EVAL_TRAIN_EVERY], self.vae_config, self.seed, 1),
                    "test": evaluate_vae(self.forward, self.x_test[::self.TEST_EVERY], self.vae_config, self.seed,
                                         self.TEST_SAMPLES)}

    def config(self):
        return {**super().config(), "model": "vae", "arch": "conv"}


class ScratchConvVAETrainer(ConvVAETrainer):
    """The NumPy conv VAE with scratch/optim.py's Adam."""

    IMPLEMENTATION, OPTIMIZER = "scratch", "adam"

    def _build(self, params):
        self.params = params
        self.optimizer = Adam(self.lr)

    def forward(self, x, eps):
        outputs = [CV.conv_vae_forward(x[i:i + EVAL_CHUNK], self.params, eps[i:i + EVAL_CHUNK], self.vae_config)[0]
                   for i in range(0, len(x), EVAL_CHUNK)]
        fields = [np.concatenate(arrays) for arrays in zip(*(o[1:] for o in outputs))]
        return V.VAEOutput(-float(np.mean(fields[0])), *fields)

    def _step(self, x, eps):
        output, cache = CV.conv_vae_forward(x, self.params, eps, self.vae_config)
        self.optimizer.step(self.params, CV.conv_vae_backward(1.0, cache))
        return output.loss

    def state(self):
        return {**self.params, **{f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in CV.parameter_shapes(self.vae_config)})
        self.optimizer.load_state_dict(split_optimizer_state(arrays))


def conv_vae_samples(params, config, seed, n=1000):
    """n images (n, 28, 28): the decoder's Bernoulli means of z ~ N(0, I), the fixed evaluation noise."""
    z = noise_for_step(0, seed, (n, config.z_dim), stream=EVAL_NOISE).astype(params["dec.W1"].dtype)  # (n, Z)
    with single_threaded_blas():
        return CV.decoded_means(z, params, config)


def train_conv_vae(args, make_trainer=ScratchConvVAETrainer, make_bar=None):
    """Train the conv VAE as the command line asks; write OUT/samples.npy (1000, 28, 28) in [0, 1]."""
    if args.likelihood != "bernoulli":
        raise RunError(f"the conv VAE's decoder is Bernoulli: --likelihood bernoulli, got {args.likelihood!r}")
    x_train, x_test = (x.astype(args.dtype) for x in load_vae_data(args.data))
    if x_train.shape[1] != 784:
        raise RunError(f"the conv VAE (--arch conv) takes 28×28 images, got {x_train.shape[1]} pixels (--data {args.data})")
    config = CV.ConvVAEConfig(z_dim=args.z_dim, width=args.width)
    trainer = make_trainer(config, x_train, x_test, args.seed, batch_size=args.batch_size, lr=args.lr)
    metrics = run_training(trainer, args.out, args.steps, args.seed, args.eval_every, resume=args.resume,
                           overwrite=getattr(args, "overwrite", False), make_bar=make_bar)
    state = trainer.state()  # every implementation's state is in the scratch layout
    samples = conv_vae_samples({name: state[name] for name in CV.parameter_shapes(config)}, config, args.seed)
    _atomic_write(os.path.join(args.out, "samples.npy"), lambda f: np.save(f, samples))
    return metrics
