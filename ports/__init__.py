"""The scratch/ modules again, written with PyTorch, TensorFlow and Keras.

Each port keeps scratch's names, signatures and NumPy-in/NumPy-out interface; only the forward is
written with the framework, and the backward calls the framework's autograd. `checks/` feeds the
same arrays to scratch and every port and asserts they agree.
"""
