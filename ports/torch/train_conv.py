"""What `python -m ports.torch train gan|vae --data mnist --arch conv` trains: scratch/train_conv.py with PyTorch.

The trainers start from the very weights scratch starts from (scratch's `init_dcgan` / `init_conv_vae`,
converted), train on the same batches with the same noise (scratch/runs.py picks both from the step
number) with `torch.optim.Adam`, and save their checkpoints in the scratch layout: parameters,
batch norm's running statistics (the nn.BatchNorm2d buffers) and Adam's moments. So a torch run
resumes exactly, a scratch checkpoint loads into it, and a torch checkpoint into scratch.

PyTorch runs on one thread inside these trainers, as NumPy's BLAS does inside scratch's
(scratch/train_conv.py). Its intra-op threads meet at a barrier after every kernel, and these kernels
are small: on this two-core machine, busy with other work, 20 steps of the checks' tiny DCGAN took 36 s
of wall time (12 CPU s) on torch's default two threads and 0.4 s on one.
"""

import contextlib

import numpy as np
import torch

from ports.torch.conv_vae import from_torch_conv_vae, to_torch_conv_vae
from ports.torch.conv_vae import parameter_map as vae_parameter_map
from ports.torch.distributed import DeviceTrainer
from ports.torch.dcgan import from_torch_dcgan, parameter_map, to_torch_dcgan
from ports.torch.train import TorchGANSteps, adam_state, load_adam_state
from scratch import conv_vae as CV
from scratch import dcgan as DC
from scratch import vae as V
from scratch.train_conv import EVAL_CHUNK, ConvVAETrainer, DCGANTrainer


@contextlib.contextmanager
def single_threaded_torch():
    """A context with PyTorch's intra-op parallelism on one thread; the previous count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class OneThread:
    """Mixed in after DeviceTrainer: the trainer's steps, evaluations and samples run on one torch thread."""

    def train_step(self, step):
        with single_threaded_torch():
            return super().train_step(step)

    def evaluate(self):
        with single_threaded_torch():
            return super().evaluate()


class TorchDCGANTrainer(TorchGANSteps, DeviceTrainer, OneThread, DCGANTrainer):
    """The DCGAN's Generator and Discriminator nn.Modules (ports/torch/dcgan.py), torch.optim.Adam for each
    player, the rate set by hand from the schedule, as ports/torch/train.py's TorchGANTrainer.

    Both modules stay in train() while training: every forward, with or without a gradient, moves
    its batch norms' running buffers, which is scratch's update_stats after every training-mode
    forward. `generate` and `discriminate` switch to eval() (the running statistics) and back.
    """

    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.Adam"

    def _build(self, params, stats):
        # on the device; under torchrun batch norm over every rank's share, and DDP wrappers for the steps
        modules = to_torch_dcgan(params, self.gan_config, stats)
        self.generator, self.discriminator = (self.ranks.synchronise_batch_norm(self.to_device(m)) for m in modules)
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.BETAS)
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.BETAS)
        self.train_generator, self.train_discriminator = self.replicate(self.generator), self.replicate(self.discriminator)

    def _named(self, net):
        return {k: v for k, v in parameter_map(self.generator, self.discriminator).items() if k.startswith(f"{net}.")}

    def _eval(self, module, x):
        module.eval()
        try:
            with torch.no_grad():
                return module(self.tensor(np.ascontiguousarray(x))).cpu().numpy()
        finally:
            module.train()

    def generate(self, z):
        with single_threaded_torch():
            return DC.to_pixels(self._eval(self.generator, z))  # (B, 1, 28, 28) in [0, 1]

    def discriminate(self, x):
        return self._eval(self.discriminator, DC.from_pixels(x))  # (B,)

    def state(self):
        params, stats = from_torch_dcgan(self.on_cpu(self.generator), self.on_cpu(self.discriminator))
        return {**params, **stats, **adam_state(self.gen_optimizer, self._named("gen"), "optim.gen."),
                **adam_state(self.disc_optimizer, self._named("disc"), "optim.disc.")}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in DC.parameter_shapes(self.gan_config)},
                    {name: arrays[name] for name in DC.init_stats(self.gan_config)})
        load_adam_state(self.gen_optimizer, self._named("gen"), arrays, "optim.gen.")
        load_adam_state(self.disc_optimizer, self._named("disc"), arrays, "optim.disc.")


class TorchConvVAETrainer(DeviceTrainer, OneThread, ConvVAETrainer):
    """ports/torch/conv_vae.py's ConvVAE nn.Module with torch.optim.Adam."""

    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.Adam"

    def _build(self, params):
        self.module = self.to_device(to_torch_conv_vae(params, self.vae_config))
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr)
        self.train_module = self.replicate(self.module)  # DDP(module) under torchrun (ports/torch/distributed.py)

    def forward(self, x, eps):
        """VAEOutput of NumPy arrays (elbo, reconstruction, kl), EVAL_CHUNK images at a time."""
        fields = []
        with torch.no_grad():
            for i in range(0, len(x), EVAL_CHUNK):
                out = self.module(self.tensor(x[i:i + EVAL_CHUNK]), self.tensor(eps[i:i + EVAL_CHUNK]))
                fields.append([t.cpu().numpy() for t in (out.elbo, out.reconstruction, out.kl)])
        elbo, reconstruction, kl = (np.concatenate(f) for f in zip(*fields))
        return V.VAEOutput(-float(np.mean(elbo)), elbo, reconstruction, kl, None, None, None, None)

    def _step(self, x, eps):
        x, eps = self.ranks.shard(x, eps)  # this rank's rows of the step's batch and noise (alone: all of them)
        self.optimizer.zero_grad()
        loss = self.train_module(self.tensor(x), self.tensor(eps)).loss
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state(self):
        return {**from_torch_conv_vae(self.on_cpu(self.module)), **adam_state(self.optimizer, vae_parameter_map(self.module), "optim.")}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in CV.parameter_shapes(self.vae_config)})
        load_adam_state(self.optimizer, vae_parameter_map(self.module), arrays, "optim.")


CONV_TRAINERS = {"gan:conv": TorchDCGANTrainer, "vae:conv": TorchConvVAETrainer}
