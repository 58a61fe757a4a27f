"""What `python -m ports.torch train gan|vae --data mnist --arch conv` trains: scratch/train_conv.py with PyTorch.

The trainers start from the very weights scratch starts from (scratch's `init_dcgan` / `init_conv_vae`,
converted), train on the same batches with the same noise (scratch/runs.py picks both from the step
number) with `torch.optim.Adam`, and save their checkpoints in the scratch layout: parameters,
batch norm's running statistics (the nn.BatchNorm2d buffers) and Adam's moments. So a torch run
resumes exactly, a scratch checkpoint loads into it, and a torch checkpoint into scratch.
"""

import numpy as np
import torch

from ports.torch.conv_vae import from_torch_conv_vae, to_torch_conv_vae
from ports.torch.conv_vae import parameter_map as vae_parameter_map
from ports.torch.dcgan import from_torch_dcgan, parameter_map, to_torch_dcgan
from ports.torch.gan import _discriminator_loss, _generator_loss
from ports.torch.train import adam_state, load_adam_state
from scratch import conv_vae as CV
from scratch import dcgan as DC
from scratch import vae as V
from scratch.train_conv import EVAL_CHUNK, ConvVAETrainer, DCGANTrainer


class OneCPUProcess:
    """Mixed in first: the conv trainers run in one process on the CPU. The command line hands every
    PyTorch trainer `ranks=` (ports/torch/distributed.py: --device and torchrun); anything but one CPU
    process is refused with one line, rather than silently trained on the CPU."""

    def __init__(self, *args, ranks=None, **kwargs):
        if ranks is not None and (ranks.device.type != "cpu" or ranks.world_size != 1):
            raise SystemExit(f"--arch conv trains on the CPU in one process for now, got --device {ranks.device} "
                             f"on {ranks.world_size} rank(s)")
        super().__init__(*args, **kwargs)


class TorchDCGANTrainer(OneCPUProcess, DCGANTrainer):
    """The DCGAN's Generator and Discriminator nn.Modules (ports/torch/dcgan.py), torch.optim.Adam for each
    player, the rate set by hand from the schedule, as ports/torch/train.py's TorchGANTrainer.

    Both modules stay in train() while training: every forward, with or without a gradient, moves
    its batch norms' running buffers, which is scratch's update_stats after every training-mode
    forward. `generate` and `discriminate` switch to eval() (the running statistics) and back.
    """

    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.Adam"

    def _build(self, params, stats):
        self.generator, self.discriminator = to_torch_dcgan(params, self.gan_config, stats)
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.BETAS)
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.BETAS)

    def _named(self, net):
        return {k: v for k, v in parameter_map(self.generator, self.discriminator).items() if k.startswith(f"{net}.")}

    def _eval(self, module, x):
        module.eval()
        try:
            with torch.no_grad():
                return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        finally:
            module.train()

    def generate(self, z):
        return DC.to_pixels(self._eval(self.generator, z))  # (B, 1, 28, 28) in [0, 1]

    def discriminate(self, x):
        return self._eval(self.discriminator, DC.from_pixels(x))  # (B,)

    def _set_lr(self, optimizer):
        for group in optimizer.param_groups:
            group["lr"] = self.schedule(self.current_step)

    def _disc_step(self, x_real, z):
        self._set_lr(self.disc_optimizer)
        with torch.no_grad():
            x_fake = self.generator(torch.from_numpy(z))  # (B, 1, 28, 28): G's samples are inputs here
        self.disc_optimizer.zero_grad()
        # real and fake batches through D separately (batch norm never mixes them), in scratch's order
        loss = _discriminator_loss(self.discriminator(torch.from_numpy(x_real)), self.discriminator(x_fake))
        loss.backward()
        self.disc_optimizer.step()
        return float(loss.detach())

    def _gen_step(self, z):
        self._set_lr(self.gen_optimizer)
        self.gen_optimizer.zero_grad()
        loss = _generator_loss(self.discriminator(self.generator(torch.from_numpy(z))), self.kind)
        loss.backward()  # also fills D's .grad, which the next _disc_step zeroes before use
        self.gen_optimizer.step()
        return float(loss.detach())

    def state(self):
        params, stats = from_torch_dcgan(self.generator, self.discriminator)
        return {**params, **stats, **adam_state(self.gen_optimizer, self._named("gen"), "optim.gen."),
                **adam_state(self.disc_optimizer, self._named("disc"), "optim.disc.")}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in DC.parameter_shapes(self.gan_config)},
                    {name: arrays[name] for name in DC.init_stats(self.gan_config)})
        load_adam_state(self.gen_optimizer, self._named("gen"), arrays, "optim.gen.")
        load_adam_state(self.disc_optimizer, self._named("disc"), arrays, "optim.disc.")


class TorchConvVAETrainer(OneCPUProcess, ConvVAETrainer):
    """ports/torch/conv_vae.py's ConvVAE nn.Module with torch.optim.Adam."""

    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.Adam"

    def _build(self, params):
        self.module = to_torch_conv_vae(params, self.vae_config)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr)

    def forward(self, x, eps):
        """VAEOutput of NumPy arrays (elbo, reconstruction, kl), EVAL_CHUNK images at a time."""
        fields = []
        with torch.no_grad():
            for i in range(0, len(x), EVAL_CHUNK):
                out = self.module(torch.from_numpy(x[i:i + EVAL_CHUNK]), torch.from_numpy(eps[i:i + EVAL_CHUNK]))
                fields.append([t.numpy() for t in (out.elbo, out.reconstruction, out.kl)])
        elbo, reconstruction, kl = (np.concatenate(f) for f in zip(*fields))
        return V.VAEOutput(-float(np.mean(elbo)), elbo, reconstruction, kl, None, None, None, None)

    def _step(self, x, eps):
        self.optimizer.zero_grad()
        loss = self.module(torch.from_numpy(x), torch.from_numpy(eps)).loss
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state(self):
        return {**from_torch_conv_vae(self.module), **adam_state(self.optimizer, vae_parameter_map(self.module), "optim.")}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in CV.parameter_shapes(self.vae_config)})
        load_adam_state(self.optimizer, vae_parameter_map(self.module), arrays, "optim.")


CONV_TRAINERS = {"gan:conv": TorchDCGANTrainer, "vae:conv": TorchConvVAETrainer}
