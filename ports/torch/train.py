"""What `python -m ports.torch train MODEL` trains: scratch/train.py with PyTorch doing the work.

The trainer starts from the very weights scratch starts from (scratch's `init_vae`, converted),
trains on the same batches with the same noise (scratch/runs.py picks both from the step
number), with `torch.optim.Adam`, and saves its checkpoint in the scratch layout, optimizer
state included, so a run resumes exactly and a scratch checkpoint loads into it.
"""

import copy

import numpy as np
import torch

from ports.torch.distributed import DeviceTrainer
from ports.torch.gan import _discriminator_loss, _generator_loss, _linears, from_torch_gan, to_torch_gan
from ports.torch.gpt import _linear_weights as _gpt_linear_weights
from ports.torch.gpt import from_torch_gpt, to_torch_gpt
from ports.torch.transformer import _cross_entropy, from_torch_transformer, to_torch_transformer
from ports.torch.vae import _linear_layers, from_torch_vae, to_torch_vae
from scratch import encoder_decoder as M
from scratch import gan as G
from scratch import language_model as L
from scratch import text as X
from scratch import vae as V
from scratch.gpt import parameter_shapes as gpt_parameter_shapes
from scratch.language_model import GPTTrainer
from scratch.train import GANTrainer, VAETrainer
from scratch.translation import TransformerTrainer


class TorchVAETrainer(DeviceTrainer, VAETrainer):
    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.Adam"

    def _build(self, params):
        self.module = self.to_device(to_torch_vae(params, self.vae_config))
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr)
        self.train_module = self.replicate(self.module)  # DDP(module) under torchrun (ports/torch/distributed.py)

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
            out = self.module(self.tensor(x), self.tensor(eps))
        terms = (t.cpu().numpy() for t in (out.elbo, out.reconstruction, out.kl))
        return V.VAEOutput(float(out.loss), *terms, None, None, None, None)

    def _step(self, x, eps):
        x, eps = self.ranks.shard(x, eps)  # this rank's rows of the step's batch and noise (alone: all of them)
        self.optimizer.zero_grad()
        loss = self.train_module(self.tensor(x), self.tensor(eps)).loss
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state(self):
        return {**from_torch_vae(self.on_cpu(self.module)), **adam_state(self.optimizer, self._named(), "optim.")}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in V.parameter_shapes(self.vae_config)})
        load_adam_state(self.optimizer, self._named(), arrays, "optim.")


def adam_state(optimizer, named, prefix):
    """torch.optim.Adam's state in scratch/optim.py's layout: prefix + "t", "m.<name>", "v.<name>".

    named: scratch name → (torch parameter, stored transposed?); torch keeps a Linear weight as
    (out, in), scratch as (in, out), so its moments are transposed too.
    """
    arrays, t = {}, 0
    for name, (p, transposed) in named.items():
        s = optimizer.state.get(p)
        if not s:
            continue
        t = int(s["step"])
        for key, ours in (("exp_avg", "m"), ("exp_avg_sq", "v")):
            value = s[key].detach()
            arrays[f"{prefix}{ours}.{name}"] = (value.T if transposed else value).contiguous().cpu().numpy().copy()
    arrays[f"{prefix}t"] = np.array(t, dtype=np.int64)
    return arrays


def load_adam_state(optimizer, named, arrays, prefix):
    """Put a scratch-layout Adam state (see adam_state) into torch.optim.Adam."""
    t = int(arrays[f"{prefix}t"])
    if t == 0:
        return
    for name, (p, transposed) in named.items():
        m, v = (torch.from_numpy(np.array(arrays[f"{prefix}{k}.{name}"])).to(p.device) for k in ("m", "v"))
        optimizer.state[p] = {"step": torch.tensor(float(t)), "exp_avg": m.T.contiguous() if transposed else m,
                              "exp_avg_sq": v.T.contiguous() if transposed else v}


class TorchGANSteps:
    """The two players' steps of the seed's §5.1 loop, shared by TorchGANTrainer and the DCGAN's trainer
    (ports/torch/train_conv.py): each sets its Adam's rate by hand from the schedule, takes this rank's
    rows, and reports the losses summed over the ranks. Mixed in first; the trainer supplies generator,
    discriminator, their train_ wrappers, the two optimizers, tensor, ranks and kind."""

    def _set_lr(self, optimizer):
        for group in optimizer.param_groups:
            group["lr"] = self.schedule(self.current_step)

    def _disc_step(self, x_real, z):
        x_real, z = self.ranks.shard(x_real, z)  # this rank's rows (alone: all of them)
        self._set_lr(self.disc_optimizer)
        with torch.no_grad():
            x_fake = self.generator(self.tensor(z))  # (B, ...): G's samples are inputs here
        self.disc_optimizer.zero_grad()
        # real and fake batches through D separately (batch norm never mixes them), in scratch's order
        loss = _discriminator_loss(self.train_discriminator(self.tensor(x_real)), self.train_discriminator(x_fake))
        loss.backward()
        self.disc_optimizer.step()
        return float(loss.detach())

    def _gen_step(self, z):
        z = self.ranks.shard(z)
        self._set_lr(self.gen_optimizer)
        self.gen_optimizer.zero_grad()
        loss = _generator_loss(self.train_discriminator(self.train_generator(self.tensor(z))), self.kind)
        loss.backward()  # also fills D's .grad, which the next _disc_step zeroes before use
        self.gen_optimizer.step()
        return float(loss.detach())

    def train_step(self, step):
        loss = super().train_step(step)
        self.last_losses = tuple(self.ranks.total(value) for value in self.last_losses)  # over the ranks
        return loss


class TorchGANTrainer(TorchGANSteps, DeviceTrainer, GANTrainer):
    """The seed's §5.1 training loop: torch.optim.Adam for each player, the schedule set by hand."""

    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.Adam"

    def _build(self, params):
        self.generator, self.discriminator = map(self.to_device, to_torch_gan(params, self.gan_config))
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.BETAS)
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.BETAS)
        # what the training steps call: the modules, or under torchrun their DDP wrappers
        self.train_generator, self.train_discriminator = self.replicate(self.generator), self.replicate(self.discriminator)

    def _named(self, module, net):
        named = {}
        for i, layer in enumerate(_linears(module), start=1):
            named[f"{net}.W{i}"], named[f"{net}.b{i}"] = (layer.weight, True), (layer.bias, False)
        return named

    def generate(self, z):
        with torch.no_grad():
            return self.generator(self.tensor(z)).cpu().numpy()

    def discriminate(self, x):
        with torch.no_grad():
            return self.discriminator(self.tensor(x)).cpu().numpy()

    def state(self):
        return {**from_torch_gan(self.on_cpu(self.generator), self.on_cpu(self.discriminator)),
                **adam_state(self.gen_optimizer, self._named(self.generator, "gen"), "optim.gen."),
                **adam_state(self.disc_optimizer, self._named(self.discriminator, "disc"), "optim.disc.")}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in G.parameter_shapes(self.gan_config)})
        load_adam_state(self.gen_optimizer, self._named(self.generator, "gen"), arrays, "optim.gen.")
        load_adam_state(self.disc_optimizer, self._named(self.discriminator, "disc"), arrays, "optim.disc.")


class ModuleAdamState:
    """The state of a trainer whose torch module converts to and from scratch as a whole (the
    Transformer, the GPT): parameters, extra arrays and Adam's moments in the scratch layout.

    The converter only copies, transposes and splits, so the moments go through it too: a copy
    of the module whose parameters hold a moment lays it out as it lays out the weights, and a
    module built from the moments in scratch's layout holds them in torch's. A subclass names
    its converters (_from_torch, _to_torch), its parameters (_scratch_names) and the arrays
    saved beside them (_extra_arrays)."""

    def _moments(self, key):
        shadow = copy.deepcopy(self.module)
        for p_shadow, p in zip(shadow.parameters(), self.module.parameters()):
            p_shadow.data = self.optimizer.state[p][key]
        return self._from_torch(shadow.cpu())

    def state(self):
        t = int(next(iter(self.optimizer.state.values()))["step"]) if self.optimizer.state else 0
        optim = {"optim.t": np.array(t, dtype=np.int64)}
        if t:
            for key, ours in (("exp_avg", "m"), ("exp_avg_sq", "v")):
                optim.update({f"optim.{ours}.{name}": value for name, value in self._moments(key).items()})
        return {**self.numpy_params(), **self._extra_arrays(), **optim}

    def load_state(self, arrays):
        names = self._scratch_names()
        self._build({name: arrays[name] for name in names})
        t = int(arrays["optim.t"])
        if t == 0:
            return
        m, v = (self._to_torch({name: arrays[f"optim.{k}.{name}"] for name in names}) for k in "mv")
        for p, pm, pv in zip(self.module.parameters(), m.parameters(), v.parameters()):
            self.optimizer.state[p] = {"step": torch.tensor(float(t)), "exp_avg": pm.detach().to(p.device, copy=True),
                                       "exp_avg_sq": pv.detach().to(p.device, copy=True)}


class TorchTransformerTrainer(DeviceTrainer, ModuleAdamState, TransformerTrainer):
    """TorchTransformer (torch.nn.Transformer inside) trained with torch.optim.Adam, the schedule set by hand.

    Starts from scratch's weights and trains on scratch's batches with the same loss (the label-
    smoothed cross-entropy of ports/torch/transformer.py, padding ignored). Dropout, when on, is
    torch's own, its generator seeded from the step (so a resumed run draws what an unbroken one
    draws); its masks are not scratch's, so only dropout-free runs follow scratch's trajectory.
    """

    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.Adam"

    def _build(self, params):
        self.module = self.to_device(to_torch_transformer(params, self.model_config))
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.schedule(1), betas=self.BETAS, eps=self.EPS)
        self.train_module = self.replicate(self.module)  # DDP(module) under torchrun (ports/torch/distributed.py)

    def _step(self, src, tgt_in, tgt_out, step):
        src, tgt_in, tgt_out = self.ranks.shard(src, tgt_in, tgt_out, terms=tgt_out != X.PAD_ID)  # the loss's terms
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(step)
        self.module.train()
        rng = self.dropout_rng(step)
        with torch.random.fork_rng(devices=[]):  # the process's own generator is left as it was
            if rng is not None:
                torch.manual_seed(int(rng.integers(2**63)))
            logits = self.train_module(self.tensor(src), self.tensor(tgt_in))  # (B, T, V)
        targets = self.tensor(tgt_out.reshape(-1))
        loss = _cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, targets != X.PAD_ID, self.label_smoothing)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def logits(self, src, tgt_in):
        self.module.eval()
        with torch.no_grad():
            return self.module(self.tensor(src), self.tensor(tgt_in)).cpu().numpy()

    def translate_ids(self, src):
        self.module.eval()
        return self.module.greedy_decode(self.tensor(src)).cpu().numpy()

    def numpy_params(self):
        return from_torch_transformer(self.on_cpu(self.module))

    def _from_torch(self, module):
        return from_torch_transformer(module)

    def _to_torch(self, params):
        return to_torch_transformer(params, self.model_config)

    def _scratch_names(self):
        return M.parameter_shapes(self.model_config)

    def _extra_arrays(self):
        return self.vocab_arrays()


class TorchGPTTrainer(DeviceTrainer, ModuleAdamState, GPTTrainer):
    """ports/torch/gpt.py's GPT nn.Module (nanoGPT's layout) with torch.optim.AdamW, the rate set by hand.

    Starts from scratch's weights and trains on scratch's batches with scratch's loss (the next-token
    cross-entropy, <pad> targets ignored) and AdamW in two parameter groups, as nanoGPT: the matrices
    and embeddings decayed (c_attn's weight holds W_q, W_k and W_v), the biases and layer-norm
    parameters not. The tied wte/lm_head is one Parameter, decayed once. Checkpoints in the scratch
    layout, AdamW's moments included, so a run resumes exactly and `python -m scratch sample` reads it.
    """

    IMPLEMENTATION, OPTIMIZER = "torch", "torch.optim.AdamW"

    def _build(self, params):
        self.module = self.to_device(to_torch_gpt(params, self.model_config))
        decayed = self._decayed()
        groups = [{"params": [p for p in self.module.parameters() if id(p) in decayed], "weight_decay": self.weight_decay},
                  {"params": [p for p in self.module.parameters() if id(p) not in decayed], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=self.schedule(1), betas=self.BETAS, eps=self.EPS)
        self.train_module = self.replicate(self.module)  # DDP(module) under torchrun (ports/torch/distributed.py)

    def _decayed(self):
        """ids of the torch parameters that hold a decayed scratch parameter."""
        weights = {name: p for name, (p, _) in _gpt_linear_weights(self.module).items()}
        for i, block in enumerate(self.module.transformer.h):
            weights.update({f"h.{i}.attn.W_{c}": block.attn.c_attn.weight for c in "qkv"})
        return {id(weights[name]) for name in self.decay_names}

    def _step(self, tokens, step):
        tokens = self.ranks.shard(tokens, terms=tokens[:, 1:] != L.PAD_ID)  # this rank's rows; the loss's terms
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(step)
        self.module.train()
        _, loss = self.train_module(self.tensor(tokens[:, :-1]), self.tensor(tokens[:, 1:]), ignore_index=L.PAD_ID)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def logits(self, inputs):
        self.module.eval()
        with torch.no_grad():
            return self.module(self.tensor(inputs)).cpu().numpy()

    def numpy_params(self):
        return from_torch_gpt(self.on_cpu(self.module))

    def _from_torch(self, module):
        return from_torch_gpt(module)

    def _to_torch(self, params):
        return to_torch_gpt(params, self.model_config)

    def _scratch_names(self):
        return gpt_parameter_shapes(self.model_config)

    def _extra_arrays(self):
        return self.extra_state()


TRAINERS = {"vae": TorchVAETrainer, "gan": TorchGANTrainer, "transformer": TorchTransformerTrainer, "gpt": TorchGPTTrainer}
