"""What `python -m scratch train MODEL` trains: one trainer per model, run by scratch/runs.py.

Not math: each trainer wires a model's forward/backward (scratch/vae.py, …) to an optimizer
(scratch/optim.py) and the data (scratch/data.py). A trainer picks its batch and its noise
from the step number alone (scratch/runs.py), which is what makes a resumed run exact.
"""

import numpy as np

from scratch import vae as V
from scratch.optim import Adam
from scratch.runs import EVAL_NOISE, batch_for_step, noise_for_step, run_training

EVAL_SAMPLES = 10  # reparameterised samples per example when estimating a test ELBO


def load_vae_data(data):
    """(x_train, x_test) for --data: 'digits' (bundled) or 'mnist:DIR' (IDX files you already have)."""
    from scratch import data as D

    if data == "digits":
        return D.load_digits("train")[0], D.load_digits("test")[0]
    if data.startswith("mnist:"):
        directory = data.split(":", 1)[1]
        return D.load_mnist(directory, "train")[0], D.load_mnist(directory, "test")[0]
    raise ValueError(f"--data must be 'digits' or 'mnist:DIR' for the VAE, got {data!r}")


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


def split_optimizer_state(arrays):
    """The "optim.*" entries of a checkpoint, with the prefix removed."""
    return {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}


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


def train_vae(args, make_trainer=ScratchVAETrainer, make_bar=None):
    """Train a VAE as the command line asks; shared by scratch and the ports' command lines."""
    x_train, x_test = load_vae_data(args.data)
    config = vae_config_from_args(args, x_train.shape[1])
    trainer = make_trainer(config, x_train, x_test, args.seed, batch_size=args.batch_size, lr=args.lr)
    return run_training(trainer, args.out, args.steps, args.seed, args.eval_every, resume=args.resume,
                        make_bar=make_bar, describe=describe_vae(config, x_train))
