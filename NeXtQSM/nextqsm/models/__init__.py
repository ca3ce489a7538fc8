"""NeXtQSM networks (PyTorch): 3D U-Net, variational network, weights and inference.

Importing this package does not import torch; import the submodules
(``nextqsm.models.unet``, ``.vn``, ``.weights``, ``.inference``) where torch is wanted.
"""
