"""Backend kernels. Each op family has one NumPy and one Numba module with the same function names.

Kernels receive validated, C-contiguous arrays. Convolutions get the input unpadded and the
geometry's padding, and pad as their layout needs (the Numba stride-1 kernels store none); average
pooling gets it already padded (see :mod:`fastcnn.functional`).
"""
