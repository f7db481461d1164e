"""Builds csae_engine._core from cpp/ through CMake (the pattern of pybind11's cmake_example)."""
import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "csae_engine" / "_version.py").read_text()).group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = "Debug" if os.environ.get("DEBUG") == "1" else "Release"
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}{os.sep}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DPYTHON_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCSAE_VERSION={VERSION}",
        ]
        args += [a for a in os.environ.get("CMAKE_ARGS", "").split(" ") if a]
        try:
            import ninja  # noqa: F401
            args += ["-GNinja"]
        except ImportError:
            pass
        build_dir = Path(self.build_temp) / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel"], cwd=build_dir, check=True)


setup(
    version=VERSION,
    packages=["csae_engine", "csae_engine.models", "csae_engine.training", "csae_engine.index", "csae_engine.kernels"],
    package_dir={"csae_engine": "csae_engine", "csae_engine.kernels": "kernels"},
    package_data={"csae_engine": ["*.pyi", "py.typed"]},
    ext_modules=[CMakeExtension("csae_engine._core")],
    cmdclass={"build_ext": CMakeBuild},
)
