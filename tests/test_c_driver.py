"""Builds tests/c/driver.c with the C kernels under AddressSanitizer and
UndefinedBehaviorSanitizer and runs it (skipped without gcc).

The kernels are compiled the way setup.py does it (each template once per
SIMD level and dtype, with the same macros and flags, read from setup.py),
plus -fsanitize=address,undefined."""
import ast
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO

SANITIZE = ["-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all"]


def setup_constants():
    """KERNEL_TEMPLATES, DTYPES, SIMD_LEVELS and COMMON_FLAGS from setup.py."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    wanted = {"KERNEL_TEMPLATES", "DTYPES", "SIMD_LEVELS", "COMMON_FLAGS"}
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            if name in wanted:
                found[name] = ast.literal_eval(node.value)
    missing = wanted - set(found)
    if missing:
        pytest.skip(f"setup.py no longer defines {sorted(missing)}")
    return found


def compile_object(gcc, source, output, flags):
    done = subprocess.run([gcc, "-c", source, "-o", output, *flags], capture_output=True, text=True)
    return done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found")
    build = tmp_path_factory.mktemp("c-driver")
    probe = build / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    if subprocess.run([gcc, str(probe), "-o", str(build / "probe"), *SANITIZE, "-fopenmp"],
                      capture_output=True).returncode != 0:
        pytest.skip("gcc cannot build with -fsanitize=address,undefined -fopenmp")
    const = setup_constants()
    common = ([f for f in const["COMMON_FLAGS"] if not f.startswith("-O")] + SANITIZE
              + ["-fopenmp", "-I" + os.path.join(REPO, "include")])
    jobs = []
    for level, (vector_bytes, level_flags) in const["SIMD_LEVELS"].items():
        for dtype, code in const["DTYPES"].items():
            macros = [f"-DLN_DT={code}", f"-DLN_DT_NAME={dtype}", f"-DLN_ISA_NAME={level}",
                      f"-DLN_VECTOR_BYTES={vector_bytes}"]
            for template in const["KERNEL_TEMPLATES"]:
                name = os.path.splitext(os.path.basename(template))[0]
                jobs.append((level, os.path.join(REPO, template), str(build / f"{name}_{level}_{dtype}.o"),
                             common + level_flags + macros))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda job: (job, compile_object(gcc, *job[1:])), jobs))
    levels_built, objects = set(), []
    for level in const["SIMD_LEVELS"]:
        level_results = [(job, ok, err) for job, (ok, err) in results if job[0] == level]
        if all(ok for _, ok, _ in level_results):
            levels_built.add(level)
            objects += [job[2] for job, _, _ in level_results]
        elif level == "baseline":
            errors = "\n".join(e for _, ok, e in level_results if not ok)
            pytest.fail("baseline kernels do not compile:\n" + errors)
    defines = [f"-DLN_BUILD_{level.upper()}=1" for level in levels_built if level != "baseline"]
    for source in ("src/kernels/dispatch.c", "tests/c/driver.c"):
        output = str(build / (os.path.basename(source) + ".o"))
        ok, err = compile_object(gcc, os.path.join(REPO, source), output, common + defines)
        assert ok, err
        objects.append(output)
    executable = build / "driver"
    link = subprocess.run([gcc, *objects, "-o", str(executable), *SANITIZE, "-fopenmp", "-lm"],
                          capture_output=True, text=True)
    assert link.returncode == 0, link.stderr
    return executable


def test_kernels_under_sanitizers(driver):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    env.pop("LAYERNORM_SIMD", None)
    done = subprocess.run([str(driver)], capture_output=True, text=True, env=env, timeout=600)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-5000:]
    assert "0 failures" in done.stdout
    assert "runtime error" not in report and "AddressSanitizer" not in report
