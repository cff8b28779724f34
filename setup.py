"""Build dcnviz and its C++/CUDA extension ``dcnviz._C``.

CUDA kernels are compiled when torch was built with CUDA and ``nvcc`` is found.
``DCNVIZ_CUDA=0`` turns them off, ``DCNVIZ_CUDA=1`` makes a missing toolkit an error.
``DCNVIZ_ASAN=1`` builds the C++ code with AddressSanitizer (for checking the kernels; load it with
``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``, see README "Fuzzing").
Without a visible GPU the kernels are built for a short architecture list so the build stays
about two minutes on a two-core machine: sm_75 (T4), sm_80 (A100), sm_90 (H100/H200) and PTX for newer
GPUs, plus sm_70 (V100) with a toolkit older than CUDA 13, which dropped Volta;
``TORCH_CUDA_ARCH_LIST`` overrides it.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_home():
    """A toolkit root holding both nvcc and the CUDA headers. torch derives it from `which nvcc`, which
    is wrong when nvcc is a wrapper script outside the toolkit (e.g. /usr/local/bin/nvcc)."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
                  os.path.dirname(os.path.dirname(nvcc)) if nvcc else None]
    for root in filter(None, candidates):
        if os.path.exists(os.path.join(root, "bin", "nvcc")) and os.path.exists(
                os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


_home = _cuda_home()
if _home:
    os.environ["CUDA_HOME"] = _home
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _default_archs():
    """The architectures of a build without a visible GPU (see the module docstring)."""
    import re
    import subprocess

    out = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release (\d+)\.", out)
    volta = "7.0;" if found and int(found.group(1)) < 13 else ""
    return volta + "7.5;8.0;9.0+PTX"


def _want_cuda():
    import torch

    flag = os.environ.get("DCNVIZ_CUDA", "auto").lower()
    if flag in ("0", "false", "off", "no"):
        return False
    found = torch.version.cuda is not None and CUDA_HOME is not None
    if flag in ("1", "true", "on", "yes") and not found:
        raise RuntimeError("DCNVIZ_CUDA=1 but torch has no CUDA or nvcc was not found")
    return found


def _cuda_library_includes():
    """Include folders for the CUDA library headers torch's CUDA headers pull in (cusparse.h, cublas_v2.h,
    cusolverDn.h). A toolkit installed with only the compiler and runtime lacks them; torch's CUDA wheels
    bring them as ``nvidia-*`` packages. They are searched after the toolkit (``-idirafter``), so the
    toolkit's own runtime headers still win."""
    if os.path.exists(os.path.join(CUDA_HOME, "include", "cusparse.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", "include")))


def _extension():
    """The extension and, in words, what it compiles."""
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # No FMA contraction: the CPU kernels give the same bits whichever instruction set runs them.
    # -fopenmp: at::parallel_for is an OpenMP loop compiled into the caller; without it every kernel
    # here ran on one thread. The extension then shares torch's libgomp (same soname, already loaded).
    # -g0 overrides the -g of Python's own CFLAGS: debug info of torch's templates doubled the compile
    # time of each file (and made a 13 MB library).
    cxx = ["-O3", "-std=c++20", "-ffp-contract=off", "-fopenmp", "-g0"]
    link = ["-fopenmp"]
    if os.environ.get("DCNVIZ_ASAN", "0").lower() in ("1", "true", "on", "yes"):
        cxx += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
        link += ["-fsanitize=address"]
    if not _want_cuda():
        what = "the C++ CPU kernels (no CUDA: DCNVIZ_CUDA=0, or no CUDA torch/nvcc)"
        return CppExtension("dcnviz._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link), what
    import torch

    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = _default_archs()
    what = (f"the C++ CPU and CUDA kernels for {os.environ.get('TORCH_CUDA_ARCH_LIST', 'the visible GPUs')} "
             "(DCNVIZ_CUDA=0 skips CUDA)")
    after = _cuda_library_includes()
    return CUDAExtension(
        "dcnviz._C",
        sources + rel("csrc/cuda/*.cpp") + rel("csrc/cuda/*.cu"),
        define_macros=[("WITH_CUDA", None)],
        extra_link_args=link,
        extra_compile_args={
            "cxx": cxx + [f"-idirafter{d}" for d in after],
            "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"] + [f"-Xcompiler=-idirafter{d}" for d in after],
        },
    ), what


_EXTENSION, _WHAT = _extension()


class _BuildExtension(BuildExtension.with_options(use_ninja=True)):
    def build_extensions(self):
        # One line, so a user waiting on the build knows what it does and that it is not stuck.
        print(f"dcnviz: compiling {_WHAT}; this takes a minute or two", file=sys.stderr, flush=True)
        super().build_extensions()


setup(
    name="dcnviz",
    version="0.1.0",
    description="Run and look inside Deformable ConvNets (v1): exact ops, official models, analysis figures",
    packages=find_packages(include=["dcnviz", "dcnviz.*"]),
    package_data={"dcnviz": ["*.json", "**/*.json"], "dcnviz.viz.explore": ["*.html", "*.css", "*.js"]},
    # The bundled models and sample images live in the top-level weights/ and samples/ (the repository
    # layout); a wheel puts them under <prefix>/share/dcnviz/, where dcnviz.models.loading.bundled_dir looks.
    data_files=[(f"share/dcnviz/{folder}", [os.path.relpath(p, HERE) for p in
                                            sorted(glob.glob(os.path.join(HERE, folder, pattern)))])
                for folder, pattern in (("weights", "*.safetensors"), ("samples", "synth_*.jpg"))],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "numpy",
        "opencv-python-headless",
        "click>=8",
        "matplotlib",
        "pillow",
        "safetensors",
        "tqdm",
    ],
    # playwright drives Debian's chromium in the tests of `dcnviz explore` (it never downloads a browser)
    extras_require={"test": ["pytest", "expecttest", "jsonschema", "pycocotools", "hypothesis", "playwright"]},
    ext_modules=[_EXTENSION],
    cmdclass={"build_ext": _BuildExtension},
    entry_points={"console_scripts": ["dcnviz=dcnviz.cli:run"]},
)
