"""python -m ports.torch train MODEL: the command line of scratch, trained with PyTorch."""

import sys

from ports.torch.train import TRAINERS
from ports.torch.train_conv import CONV_TRAINERS
from scratch.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m ports.torch", implementation="torch", trainers={**TRAINERS, **CONV_TRAINERS}))
