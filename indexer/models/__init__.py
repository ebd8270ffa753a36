"""Models: the encoder registry and its backends, devices, and the preprocessing a model needs."""
