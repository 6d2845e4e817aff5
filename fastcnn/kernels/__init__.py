"""Backend kernels. Each op family has one NumPy and one Numba module with the same function names.

Kernels receive validated, C-contiguous arrays: convolution and average pooling get the input already
padded (see :mod:`fastcnn.functional`), so both backends share one padding rule.
"""
