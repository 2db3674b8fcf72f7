"""Data sources for the harness (grain). Fashion-MNIST first; CIFAR-10 and ImageNet follow."""
