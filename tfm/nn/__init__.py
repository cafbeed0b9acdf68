"""Learned reconstruction: the 3D network, its physics layer, training and inference."""
