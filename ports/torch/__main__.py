"""python -m ports.torch train MODEL: the command line of scratch, trained with PyTorch, on --device,
and under `torchrun --nproc-per-node N -m ports.torch train MODEL` on N ranks (ports/torch/distributed.py)."""

import sys

from ports.torch.distributed import command_line
from ports.torch.train import TRAINERS
from ports.torch.train_conv import CONV_TRAINERS
from ports.torch.train_diffusion import DIFFUSION_TRAINERS
from scratch.__main__ import main

if __name__ == "__main__":
    sys.exit(command_line(main, {**TRAINERS, **CONV_TRAINERS, **DIFFUSION_TRAINERS}))
