"""What `python -m ports.torch train diffusion --data ring|grid` trains: scratch/train_diffusion.py with PyTorch.

The trainer starts from the very weights scratch starts from (the denoiser's `init`, converted),
trains on the same batches, steps t and noise ε (scratch/train_diffusion.py picks all three from
the step number), at the same rate (the cosine decay set by hand before each step), with
`torch.optim.Adam`, and saves its checkpoint in the scratch layout, Adam's moments included:
a torch run resumes exactly, a scratch checkpoint loads into it, and a torch checkpoint into scratch.
On --device and under torchrun as every PyTorch trainer (ports/torch/distributed.py).
"""

import numpy as np
import torch

from ports.torch.diffusion import _eps_loss, _q_sample, from_torch_mlp_denoiser, parameter_map, to_torch_mlp_denoiser
from ports.torch.distributed import DeviceTrainer
from ports.torch.train import adam_state, load_adam_state
from scratch import diffusion as Df
from scratch.runs import RunError
from scratch.train_diffusion import DiffusionTrainer

# The denoisers this port has: the scratch Denoiser → (to torch, from torch, the parameter map)
TORCH_DENOISERS = {Df.MLP_DENOISER: (to_torch_mlp_denoiser, from_torch_mlp_denoiser, parameter_map)}


class TorchDiffusionTrainer(DeviceTrainer, DiffusionTrainer):
    """ports/torch/diffusion.py's MLPDenoiser with torch.optim.Adam, the rate set by hand from the schedule.

    One step is Algorithm 1 of Ho et al. (2020) on tensors: x_t = q_sample(x_0, t, ε) with scratch's
    ᾱ (float64, cast per example to the data's dtype), ε̂ = module(x_t, t), the mean of (ε̂ − ε)²,
    loss.backward(), optimizer.step().
    """

    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.Adam"

    def __init__(self, data, *args, **kwargs):
        if data == "mnist":  # scratch/train_diffusion.py hands the digits to scratch/guidance.py's guided trainer
            raise RunError("--data mnist: the PyTorch diffusion trainer has the mixtures' MLP (--data ring, grid); "
                           "the word-guided digit U-Net trains in scratch: python -m scratch train diffusion --data mnist"
                           "; its nn.Module is ports/torch/unet.py")
        super().__init__(data, *args, **kwargs)

    def _converters(self):
        if self.denoiser not in TORCH_DENOISERS:
            raise ValueError(f"the PyTorch port has no module for this denoiser yet: it has the MLP of "
                             f"ports/torch/diffusion.py (--data ring, grid), got {self.denoiser_config!r}")
        return TORCH_DENOISERS[self.denoiser]

    def _build(self, params):
        to_torch, _, _ = self._converters()
        self.module = self.to_device(to_torch(params, self.denoiser_config))
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr)
        self.train_module = self.replicate(self.module)  # DDP(module) under torchrun (ports/torch/distributed.py)
        self.alphas_cumprod_tensor = torch.from_numpy(self.alphas_cumprod).to(self.device)  # (T,) float64

    def _named(self):
        return self._converters()[2](self.module)

    def _eps(self, x_t, t, cond):
        with torch.no_grad():
            return self.module(self.tensor(x_t), self.tensor(np.asarray(t, np.int64)), cond).cpu().numpy()

    def _step(self, x0, t, eps, cond):
        x0, t, eps = self.ranks.shard(x0, t, eps)  # this rank's rows of the step's batch (alone: all of them)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_schedule(self.current_step)  # what scratch's Adam reads at this step
        x0, t, eps = self.tensor(x0), self.tensor(t.astype(np.int64)), self.tensor(eps)
        x_t = _q_sample(x0, t, eps, self.alphas_cumprod_tensor)  # (B, ...): no gradient reaches the data
        loss = _eps_loss(self.train_module(x_t, t, cond), eps)
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


DIFFUSION_TRAINERS = {"diffusion": TorchDiffusionTrainer}
