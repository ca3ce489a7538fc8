"""NeXtQSM core library: Qt-free, Slicer-free quantitative susceptibility mapping.

Conventions (see ``shared/DESIGN.md``):
* arrays are in nibabel voxel order (i, j, k); torch tensors are (B, C, i, j, k);
* fields and chi are in ppm inside the library; rad and Hz only at the edges;
* the B0 direction is a unit vector in voxel-axis coordinates (``geometry.b0_direction``);
* float32 / complex64; user-facing input problems raise :class:`nextqsm.errors.QSMInputError`.
"""

__version__ = "0.1.0"

from .errors import QSMInputError  # noqa: F401
