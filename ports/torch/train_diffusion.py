"""What `python -m ports.torch train diffusion --data ring|grid|mnist` trains: scratch/train_diffusion.py
(and for the digits scratch/guidance.py) with PyTorch.

The trainers start from the very weights scratch starts from (the denoiser's `init`, converted),
train on the same batches, steps t and noise ε (scratch/train_diffusion.py picks all three from
the step number; on the digits also the rows whose word is dropped to ∅), at the same rate (the
cosine decay set by hand before each step), with `torch.optim.Adam`, and save their checkpoints in
the scratch layout, Adam's moments included: a torch run resumes exactly, a scratch checkpoint loads
into it, and a torch checkpoint into scratch. On --device and under torchrun as every PyTorch
trainer (ports/torch/distributed.py). The mixtures train ports/torch/diffusion.py's MLPDenoiser,
the digits ports/torch/unet.py's UNet; the guided digit samples are scratch's guided DDIM
(scratch/guidance.py) on the weights converted back.
"""

import numpy as np
import torch

from ports.torch.diffusion import _eps_loss, _q_sample, from_torch_mlp_denoiser, to_torch_mlp_denoiser
from ports.torch.diffusion import parameter_map as mlp_parameter_map
from ports.torch.distributed import DeviceTrainer
from ports.torch.train import adam_state, load_adam_state
from ports.torch.unet import from_torch_unet, to_torch_unet
from ports.torch.unet import parameter_map as unet_parameter_map
from scratch import diffusion as Df
from scratch import unet as U
from scratch.guidance import GuidedDigitTrainer, in_chunks
from scratch.train_diffusion import DiffusionTrainer

# The denoisers this port has: the scratch Denoiser → (to torch, from torch, the parameter map)
TORCH_DENOISERS = {Df.MLP_DENOISER: (to_torch_mlp_denoiser, from_torch_mlp_denoiser, mlp_parameter_map),
                   U.UNET_DENOISER: (to_torch_unet, from_torch_unet, unet_parameter_map)}


class TorchDenoiserSteps:
    """The PyTorch half of a diffusion trainer, mixed in before DeviceTrainer and a scratch trainer.

    One step is Algorithm 1 of Ho et al. (2020) on tensors: x_t = q_sample(x_0, t, ε) with scratch's
    ᾱ (float64, cast per example to the data's dtype), ε̂ = module(x_t, t, cond), the mean of
    (ε̂ − ε)², loss.backward(), optimizer.step().
    """

    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.Adam"

    def _converters(self):
        if self.denoiser not in TORCH_DENOISERS:
            raise ValueError(f"the PyTorch port has no module for this denoiser: it has the MLP of "
                             f"ports/torch/diffusion.py and the U-Net of ports/torch/unet.py, got {self.denoiser_config!r}")
        return TORCH_DENOISERS[self.denoiser]

    def _build(self, params):
        to_torch, _, _ = self._converters()
        self.module = self.to_device(to_torch(params, self.denoiser_config))
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr)
        self.train_module = self.replicate(self.module)  # DDP(module) under torchrun (ports/torch/distributed.py)
        self.alphas_cumprod_tensor = torch.from_numpy(self.alphas_cumprod).to(self.device)  # (T,) float64

    def _named(self):
        return self._converters()[2](self.module)

    def _ids(self, ids):
        return None if ids is None else self.tensor(np.asarray(ids, np.int64))

    def _eps(self, x_t, t, cond):
        with torch.no_grad():
            return self.module(self.tensor(x_t), self._ids(t), self._ids(cond)).cpu().numpy()

    def _step(self, x0, t, eps, cond):
        if cond is None:
            x0, t, eps = self.ranks.shard(x0, t, eps)  # this rank's rows of the step's batch (alone: all of them)
        else:
            x0, t, eps, cond = self.ranks.shard(x0, t, eps, cond)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_schedule(self.current_step)  # what scratch's Adam reads at this step
        x0, t, eps = self.tensor(x0), self._ids(t), self.tensor(eps)
        x_t = _q_sample(x0, t, eps, self.alphas_cumprod_tensor)  # (B, ...): no gradient reaches the data
        loss = _eps_loss(self.train_module(x_t, t, self._ids(cond)), eps)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state(self):
        _, from_torch, _ = self._converters()
        return {**from_torch(self.on_cpu(self.module)), **adam_state(self.optimizer, self._named(), "optim.")}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in self.denoiser.shapes(self.denoiser_config)})
        load_adam_state(self.optimizer, self._named(), arrays, "optim.")


class TorchDiffusionTrainer(TorchDenoiserSteps, DeviceTrainer, DiffusionTrainer):
    """The mixtures (--data ring, grid): ports/torch/diffusion.py's MLPDenoiser with torch.optim.Adam."""


class TorchGuidedDigitTrainer(TorchDenoiserSteps, DeviceTrainer, GuidedDigitTrainer):
    """The digits (--data mnist): scratch/guidance.py's guided trainer, its batches and dropped words, with
    ports/torch/unet.py's UNet and torch.optim.Adam. `params` is the module's weights in the scratch
    layout: scratch's guided DDIM draws the samples from them (digit_samples)."""

    @property
    def params(self):
        return from_torch_unet(self.on_cpu(self.module))

    def _eps(self, x_t, t, cond):
        return in_chunks(super()._eps, x_t, t, cond)  # CHUNK images a forward, as scratch's


def torch_diffusion_trainer(data, *args, **kwargs):
    """The trainer of --data: TorchGuidedDigitTrainer for mnist, TorchDiffusionTrainer for the mixtures."""
    return (TorchGuidedDigitTrainer if data == "mnist" else TorchDiffusionTrainer)(data, *args, **kwargs)


DIFFUSION_TRAINERS = {"diffusion": torch_diffusion_trainer}
