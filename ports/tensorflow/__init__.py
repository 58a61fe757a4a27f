"""TensorFlow 2 port of scratch/: same names; the forward in TF, the backward by tf.GradientTape."""

import os

# oneDNN's reordered float32 kernels change results in the last bits from run to run, and TF's
# start-up logs drown the output; both must be set before TensorFlow is first imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
