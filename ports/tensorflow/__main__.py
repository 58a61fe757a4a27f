"""python -m ports.tensorflow train MODEL: the command line of scratch, trained with TensorFlow."""

import sys

from ports.tensorflow.train import TRAINERS
from ports.tensorflow.train_conv import CONV_TRAINERS
from ports.tensorflow.train_diffusion import DIFFUSION_TRAINERS
from scratch.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m ports.tensorflow", implementation="tensorflow", trainers={**TRAINERS, **CONV_TRAINERS, **DIFFUSION_TRAINERS}))
