"""What `python -m ports.torch train MODEL` trains: scratch/train.py with PyTorch doing the work.

The trainer starts from the very weights scratch starts from (scratch's `init_vae`, converted),
trains on the same batches with the same noise (scratch/runs.py picks both from the step
number), with `torch.optim.Adam`, and saves its checkpoint in the scratch layout, optimizer
state included, so a run resumes exactly and a scratch checkpoint loads into it.
"""

import numpy as np
import torch

from ports.torch.vae import _linear_layers, from_torch_vae, to_torch_vae
from scratch import vae as V
from scratch.train import VAETrainer


class TorchVAETrainer(VAETrainer):
    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.Adam"

    def _build(self, params):
        self.module = to_torch_vae(params, self.vae_config)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr)

    def _named(self):
        """scratch name → (torch parameter, stored transposed?): the map for optimizer state."""
        named = {}
        for w, b, attribute in _linear_layers(self.vae_config):
            layer = getattr(self.module, attribute)
            named[w], named[b] = (layer.weight, True), (layer.bias, False)
        if self.vae_config.likelihood == "gaussian":
            named["dec.log_var"] = (self.module.dec_log_var, False)
        return named

    def forward(self, x, eps):
        with torch.no_grad():
            out = self.module(torch.from_numpy(x), torch.from_numpy(eps))
        return V.VAEOutput(float(out.loss), *(t.numpy() for t in (out.elbo, out.reconstruction, out.kl)), None, None, None, None)

    def _step(self, x, eps):
        self.optimizer.zero_grad()
        loss = self.module(torch.from_numpy(x), torch.from_numpy(eps)).loss
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state(self):
        arrays = dict(from_torch_vae(self.module))
        t = 0
        for name, (p, transposed) in self._named().items():
            s = self.optimizer.state.get(p)
            if not s:
                continue
            t = int(s["step"])
            for key, ours in (("exp_avg", "m"), ("exp_avg_sq", "v")):
                value = s[key].detach()
                arrays[f"optim.{ours}.{name}"] = (value.T if transposed else value).contiguous().numpy().copy()
        arrays["optim.t"] = np.array(t, dtype=np.int64)
        return arrays

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in V.parameter_shapes(self.vae_config)})
        t = int(arrays["optim.t"])
        if t == 0:
            return
        for name, (p, transposed) in self._named().items():
            m, v = (torch.from_numpy(np.array(arrays[f"optim.{k}.{name}"])) for k in ("m", "v"))
            self.optimizer.state[p] = {"step": torch.tensor(float(t)), "exp_avg": m.T.contiguous() if transposed else m,
                                       "exp_avg_sq": v.T.contiguous() if transposed else v}


TRAINERS = {"vae": TorchVAETrainer}
