"""What the emulation checks share: compiling a driver (which includes the device headers of
csrc/cuda) against torch's headers, and running each configuration through two builds or modes
of the kernels and comparing every output."""
import os
import pathlib
import re
import subprocess
import sys

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
    subprocess.run(["g++", f"-std={std}", "-O1", "-pthread", "-fno-trapping-math", *checks,
                    *defines, *includes, str(HERE / driver), "-o", str(exe), *libraries],
                   check=True)
    return exe


def why_it_failed(stderr):
    """What a failed driver's stderr says of why: a sanitizer's error, the access and its first
    frame, and its summary, or the emulation's own message; else its last lines."""
    reasons = [line for line in stderr.splitlines()
               if re.search(r"ERROR:|SUMMARY:|runtime error|^emulation:|^(READ|WRITE) of|^ +#0 ",
                            line)]
    return "\n".join(reasons) if reasons else stderr.strip()[-2000:]


def run_outputs(commands, config, workdir, extra=(), environments=None):
    """Runs each command (the executable and its leading arguments) with the configuration's
    arguments, an output file and the `extra` arguments, and returns the outputs as float64
    arrays, in order. environments: per command, variables to set for it (EMU_SCHEDULE)."""
    outputs = []
    for i, command in enumerate(commands):
        out = workdir / f"outputs{i}.bin"
        env = {**os.environ, **environments[i]} if environments else None
        result = subprocess.run(
            [*map(str, command), *map(str, config), str(out), *map(str, extra)],
            stderr=subprocess.PIPE, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} {config} failed ({result.returncode}):\n"
                               f"{why_it_failed(result.stderr)}")
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
