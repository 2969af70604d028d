"""Datasets (image folders, CIFAR-10 from its JPEG archive), tasks and on-device transforms."""
