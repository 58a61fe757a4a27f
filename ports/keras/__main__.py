"""python -m ports.keras train MODEL: the command line of scratch, trained with Keras 3."""

import sys

from ports.keras.train import TRAINERS
from ports.keras.train_conv import CONV_TRAINERS
from ports.keras.train_diffusion import DIFFUSION_TRAINERS
from scratch.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m ports.keras", implementation="keras", trainers={**TRAINERS, **CONV_TRAINERS, **DIFFUSION_TRAINERS}))
