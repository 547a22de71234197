"""Build hook for the one C extension, ``actors._pgtuple`` (the CDC reader's compiled row-change decoder).

Everything else is in pyproject.toml.  The extension is optional: without a C compiler
the install still succeeds and ``actors.pgoutput`` uses its Python code (same results,
about half as much again reader CPU per change; ``actors.pgoutput.COMPILED`` says which).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = cythonize(
    [Extension("actors._pgtuple", ["actors/_pgtuple.pyx"], extra_compile_args=["-O2"])],
    language_level=3,
    quiet=True,
)
for ext in extensions:
    ext.optional = True  # a failed compile skips the extension instead of failing the install (cythonize drops the flag)

setup(ext_modules=extensions)
