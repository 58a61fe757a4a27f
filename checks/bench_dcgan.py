"""`python -m checks.bench dcgan` and `python -m checks.bench conv_vae`: one training step, scratch against PyTorch.

A step is what `train gan|vae --data mnist --arch conv` repeats, timed through the trainers
themselves so that everything a run pays is in it: the batch and the noise the step number picks,
the forwards, the backwards and Adam. DCGAN: one update of D (G(z), D on the real and on the fake
batch), then one of G through D; scratch/train_conv.py's ScratchDCGANTrainer (scratch/dcgan.py's
hand-written backward, scratch/optim.py's Adam) against ports/torch/train_conv.py's TorchDCGANTrainer
(nn.Modules, `loss.backward()`, torch.optim.Adam). Conv VAE: one Adam step on −ELBO, ScratchConvVAETrainer
against TorchConvVAETrainer. The command line's default networks (DCGAN: Z 64, widths 32; conv VAE:
Z 16, width 32), batch 64, float32, as the runs train.

Threads: as in the runs, each on one thread (scratch's BLAS through threadpoolctl, torch through
torch.set_num_threads), so the two compare the same CPU; "torch, 2 threads" shows what torch's own
default would do on this machine. Timed with checks/bench.py's interleaved method.

FLOPs: multiply-adds of the convolutions and linear layers, 2 FLOPs each; a backward costs two
forwards (dx and dw), less the dx no one needs, which both sides skip (D's input in D's own step,
the data's in the conv VAE's first layer: scratch by needs_input_grad=False, torch because those
tensors never require a gradient); elementwise work, im2col, batch norm and Adam are free in the count.
"""

import itertools

import numpy as np

from scratch import conv_vae as CV
from scratch import dcgan as DC

BATCH = 64


def _torch_threads(n):
    """A context with torch on n threads (the trainers' own context sets one)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def context():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return context()


def _stepper(trainer, beneath=None):
    """A function that runs the trainer's next step. beneath: a class of the trainer's MRO whose train_step
    to call on torch's two threads, under the trainer's own one-thread context (OneThread)."""
    steps = itertools.count(1)
    if beneath is None:
        return lambda: trainer.train_step(next(steps))

    def run():
        with _torch_threads(2):
            return beneath.train_step(trainer, next(steps))

    return run


def dcgan_group(rng, dtype=np.float32):
    from ports.torch.train_conv import TorchDCGANTrainer
    from scratch.train_conv import DCGANTrainer, ScratchDCGANTrainer

    config = DC.DCGANConfig()  # Z 64, g = d = 32: the command line's default
    make = lambda cls: cls(config, "mnist", 0, 10**6, batch_size=BATCH, lr=2e-4, lr_end=2e-4, dtype=dtype)  # noqa: E731
    scratch, torch_one, torch_two = make(ScratchDCGANTrainer), make(TorchDCGANTrainer), make(TorchDCGANTrainer)
    z, g, d, q = config.z_dim, config.gen_width, config.disc_width, 7
    gen = BATCH * (z * 2 * g * q * q + q * q * 2 * g * g * 16 + 4 * q * q * g * 16)  # linear, 2g→g, g→1 (per input pixel)
    first = BATCH * 4 * q * q * d * 16  # D's first layer, 1→d (per output pixel)
    disc = first + BATCH * (q * q * d * 2 * d * 16 + 2 * d * q * q)  # 1→d, d→2d, linear
    # D step: G forward, D forward + backward on real and fake, no dx into either batch; G step: G and D forward + backward
    flops = 2.0 * (gen + 2 * (3 * disc - first) + 3 * gen + 3 * disc)
    count = f"2·(G fwd + 2×(3 D − D's first dx) + 3 G + 3 D) multiply-adds = {flops / 1e6:.0f} MFLOP"
    title = f"DCGAN training step (D step + G step, Adam)  B={BATCH} Z={z} widths {g}/{d} {np.dtype(dtype).name}"
    candidates = {"scratch": (_stepper(scratch), flops), "torch": (_stepper(torch_one), flops),
                  "torch, 2 threads": (_stepper(torch_two, DCGANTrainer), flops)}
    return title, count, candidates, "torch", 1.5


def conv_vae_group(rng, dtype=np.float32):
    from ports.torch.train_conv import TorchConvVAETrainer
    from scratch.train import load_vae_data
    from scratch.train_conv import ConvVAETrainer, ScratchConvVAETrainer

    config = CV.ConvVAEConfig()  # Z 16, c 32
    x_train, x_test = (x.astype(dtype) for x in load_vae_data("mnist"))
    make = lambda cls: cls(config, x_train, x_test, 0, batch_size=BATCH, lr=1e-3)  # noqa: E731
    scratch, torch_one, torch_two = make(ScratchConvVAETrainer), make(TorchConvVAETrainer), make(TorchConvVAETrainer)
    z, c = config.z_dim, config.width
    encoder = 169 * c * 9 + 36 * c * 2 * c * 9 + 2 * 2 * c * 36 * z  # 1→c (13×13), c→2c (6×6), two heads
    decoder = z * c * 49 + 49 * c * 2 * c * 9 + 196 * 2 * c * c * 9 + 784 * c * 9  # linear, c→2c, 2c→c, c→1
    flops = 2.0 * BATCH * (3 * (encoder + decoder) - 169 * c * 9)  # forward + a backward of two products, no dx into x
    count = f"2·(3·(encoder + decoder) − the data's dx) multiply-adds = {flops / 1e6:.0f} MFLOP"
    title = f"conv VAE training step (−ELBO, Adam)  B={BATCH} Z={z} c={c} {np.dtype(dtype).name}"
    candidates = {"scratch": (_stepper(scratch), flops), "torch": (_stepper(torch_one), flops),
                  "torch, 2 threads": (_stepper(torch_two, ConvVAETrainer), flops)}
    return title, count, candidates, "torch", 1.5


def bench_dcgan(args, report):
    rng = np.random.default_rng(args.seed)
    return report(*dcgan_group(rng), args, rng)


def bench_conv_vae(args, report):
    rng = np.random.default_rng(args.seed)
    return report(*conv_vae_group(rng), args, rng)
