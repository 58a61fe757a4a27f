"""python -m ports.tensorflow train MODEL: the command line of scratch, trained with TensorFlow."""

import sys

from ports.tensorflow.train import TRAINERS
from scratch.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m ports.tensorflow", implementation="tensorflow", trainers=TRAINERS))
