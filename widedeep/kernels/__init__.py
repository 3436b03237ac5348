"""widedeep.kernels"""
