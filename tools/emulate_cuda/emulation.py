"""What the emulation checks share: compiling a driver (which includes the device headers of
csrc/cuda) against torch's headers, and running each configuration through two builds or modes
of the kernels and comparing every output."""
import atexit
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def compile_driver(driver, exe, include_dirs=(), defines=(), std="c++20", link_c10=False,
                   sanitize=False):
    """Builds tools/emulate_cuda/<driver> into exe, the include_dirs searched first (then this
    folder and csrc/, so that a driver includes the device headers of csrc/cuda); link_c10
    links torch's libc10 (TORCH_CHECK's errors); sanitize builds with AddressSanitizer and
    UBSan, so that an access outside a buffer or a block's shared memory ends the run."""
    import torch.utils.cpp_extension as ext
    includes = [f"-I{d}" for d in (*include_dirs, HERE, ROOT / "csrc", ext.include_paths()[0])]
    libraries = []
    if link_c10:
        lib = ext.library_paths()[0]
        libraries = [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10"]
    checks = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
              "-fno-omit-frame-pointer"] if sanitize else []
    command = ["g++", f"-std={std}", "-O1", "-pthread", "-fno-trapping-math", *checks,
               *defines, *includes, str(HERE / driver), "-o", "{exe}", *libraries]
    # the checks of one process (tests/test_cuda_emulation.py) build the same drivers: each
    # build is made once per process and sources, and copied
    key = hashlib.sha256(repr(command).encode() + _sources_digest()).hexdigest()
    built = _build_dir() / key
    if not built.exists():
        subprocess.run([str(built) if a == "{exe}" else a for a in command], check=True)
    shutil.copy2(built, exe)
    return exe


def _sources_digest():
    """A digest of every file a driver can include from this folder and csrc/."""
    digest = hashlib.sha256()
    for folder in (HERE, ROOT / "csrc"):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in (".h", ".cuh", ".cpp", ".hpp"):
                digest.update(str(path).encode() + path.read_bytes())
    return digest.digest()


_BUILDS = []


def _build_dir():
    """This process's folder of built drivers, removed when it exits."""
    if not _BUILDS:
        _BUILDS.append(pathlib.Path(tempfile.mkdtemp(prefix="tlstm_emulation_")))
        atexit.register(shutil.rmtree, _BUILDS[0], ignore_errors=True)
    return _BUILDS[0]


def why_it_failed(stderr):
    """What a failed driver's stderr says of why: a sanitizer's error, the access and its first
    frame, and its summary, or the emulation's own message; else its last lines."""
    reasons = [line for line in stderr.splitlines()
               if re.search(r"ERROR:|SUMMARY:|runtime error|^emulation:|^(READ|WRITE) of|^ +#0 ",
                            line)]
    return "\n".join(reasons) if reasons else stderr.strip()[-2000:]


def run_outputs(commands, config, workdir, extra=(), environments=None):
    """Runs each command (the executable and its leading arguments) with the configuration's
    arguments, an output file and the `extra` arguments, all at once, and returns the outputs
    as float64 arrays, in order. environments: per command, variables to set for it
    (EMU_SCHEDULE)."""
    runs = []
    for i, command in enumerate(commands):
        out, err = workdir / f"outputs{i}.bin", workdir / f"stderr{i}.txt"
        env = {**os.environ, **environments[i]} if environments else None
        with open(err, "w") as stderr:
            runs.append((command, out, err, subprocess.Popen(
                [*map(str, command), *map(str, config), str(out), *map(str, extra)],
                stderr=stderr, env=env)))
    outputs = []
    for command, out, err, process in runs:
        if process.wait() != 0:
            for _, _, _, other in runs:
                other.wait()
            raise RuntimeError(f"{command[0]} {config} failed ({process.returncode}):\n"
                               f"{why_it_failed(err.read_text(errors='replace'))}")
        outputs.append(np.fromfile(out))
    return outputs


def compare_configs(configs, run, tolerance, relative, out=None):
    """run(config) -> (reference, current) outputs as float64 arrays; prints a line per
    configuration and returns the number that failed. With `relative`, errors are divided by
    max(1, max |reference|); buffers the kernels must write start at -7 in the drivers."""
    out = out or sys.stdout  # looked up now: callers may redirect it
    failures = 0
    for config in configs:
        ref, cur = run(config)
        if ref.size != cur.size:
            err = float("inf")
        else:
            err = float(np.max(np.abs(ref - cur), initial=0.0))
            if relative:
                err /= max(1.0, float(np.max(np.abs(ref), initial=0.0)))
        ok = err <= tolerance[config[0]] and np.isfinite(cur).all() and not (cur == -7).any()
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {config}: {cur.size} values, max difference "
              f"{'(relative) ' if relative else ''}= {err:.2e}", file=out, flush=True)
    return failures
