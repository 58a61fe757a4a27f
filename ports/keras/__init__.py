"""Keras 3 port of scratch/: same names; the forward in keras.ops and Keras layers.

Keras 3 runs on a backend; this port uses TensorFlow's (the seed's §5.3 uses Keras on TF), and
takes gradients with the backend's tf.GradientTape, since Keras 3 has no autograd of its own.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
