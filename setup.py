"""The one compiled part: fusion/_kernels.c, optional (without a C compiler the torch passes run instead)."""

from setuptools import Extension, setup

FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno"]
setup(ext_modules=[Extension("fusion._kernels", ["fusion/_kernels.c"], extra_compile_args=FLAGS, optional=True)])
