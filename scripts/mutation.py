"""Mutation testing, one module at a time, with mutmut (called by scripts/mutation).

mutmut's own settings are in pyproject.toml ([tool.mutmut]); which tests exercise which module is in
[tool.image-service.mutation.tests] there, so that each module runs only its fast tests, not the whole
suite. Each module runs in a fresh `mutants/` directory, in a child process of its own, because
mutmut keeps its configuration and state in globals. Modules whose tests need MongoDB get one
FerretDB (or MONGO_TEST_URI) for the whole run, so no forked test run starts a server.

Equivalent mutants (no test can tell them from the original) are listed by hand in
scripts/mutation-equivalents.toml, each with the line as mutated and a reason; they leave the score's
denominator. An entry whose mutant no longer makes that line is reported as stale, so a renumbering
after an edit never hides a different mutant.
"""

import argparse
import fnmatch
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "scripts" / "mutation-equivalents.toml"
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}


def module_tests() -> dict[str, dict]:
    """{module path: {"tests": pytest arguments, "mongo": bool}} from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["image-service"]["mutation"]["modules"]


def run_one(module: str, setup: dict, sample: int | None, seed: int, again: bool) -> None:
    """In a child process: mutmut on `module` only, with only its tests to select from, and only
    the functions that `setup["functions"]` names (globs of mutmut's names), when it names any."""
    os.chdir(ROOT)
    from mutmut import configuration

    cfg = configuration.config()
    cfg.only_mutate = [module]
    cfg.pytest_add_cli_args_test_selection = setup["tests"]
    from mutmut.__main__ import _run, create_mutants
    from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths

    if again:  # the last run's undetected mutants, against the tests as they are now
        from mutmut.stats import status_by_exit_code

        codes, known = read_meta(module), equivalents()  # equivalents would only survive again
        again = [n for n, c in codes.items() if c is not None and status_by_exit_code[c] not in DETECTED]
        if again := [n for n in again if n not in known]:  # none left: nothing to run
            _run(again, 1)
        return
    names: list[str] = []
    functions = [module_prefix(module) + f for f in setup.get("functions", [])]
    if sample is not None or functions:
        Path("mutants").mkdir(exist_ok=True)
        copy_src_dir()
        copy_also_copy_files()
        setup_source_paths()
        create_mutants(1)
        names = sorted(n for n in read_meta(module) if not functions or matches(n, functions))
        if sample is not None and sample < len(names):
            names = sorted(random.Random(seed).sample(names, sample))
    _run(names, max_children=1)


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def read_meta(module: str) -> dict[str, int | None]:
    return json.loads((ROOT / "mutants" / f"{module}.meta").read_text())["exit_code_by_key"]


def equivalents() -> dict[str, dict]:
    return {e["mutant"]: e for e in tomllib.loads(EQUIVALENTS.read_text()).get("equivalent", [])}


def report(module: str, names: set[str] | None) -> tuple[int, int]:
    """Prints the score and each survivor's diff; returns (detected, counted)."""
    os.chdir(ROOT)
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    codes = read_meta(module)
    if names is not None:
        codes = {k: v for k, v in codes.items() if k in names}
    known = equivalents()
    status = {name: status_by_exit_code[code] for name, code in codes.items()}
    equivalent, stale = [], []
    for name, entry in known.items():
        if name not in status or not name.startswith(module_prefix(module)):
            continue
        if entry["line"].strip() in mutated_lines(get_diff_for_mutant(name, path=module)):
            equivalent.append(name)
        else:
            stale.append(name)
    counted = {n: s for n, s in status.items() if n not in equivalent and s != "not checked"}
    detected = sum(s in DETECTED for s in counted.values())
    survivors = sorted(n for n, s in counted.items() if s not in DETECTED)
    for name in survivors:
        print(f"\n# {name}: {counted[name]}")
        print(get_diff_for_mutant(name, path=module))
    for name in stale:
        print(f"\n! stale entry in {EQUIVALENTS.name}: {name} no longer makes {known[name]['line']!r}")
    score = 100 * detected / len(counted) if counted else 100.0
    print(
        f"\n{module}: {detected} of {len(counted)} detected, score {score:.1f}% "
        f"({len(survivors)} survived, {len(equivalent)} equivalent left out, "
        f"{len(codes) - len(counted) - len(equivalent)} not run)"
    )
    return detected, len(counted)


def module_prefix(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".") + "."


def mutated_lines(diff: str) -> set[str]:
    return {
        line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("++")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="e.g. images/validation.py (default: all configured)")
    parser.add_argument("--sample", type=int, help="run only N mutants per module, chosen at random")
    parser.add_argument("--seed", type=int, default=21, help="of the sample (default 21)")
    parser.add_argument(
        "--again",
        action="store_true",
        help="run only the survivors of the last run of this module again (after adding tests)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configured = module_tests()
    if args.one:
        run_one(args.one, configured[args.one], args.sample, args.seed, args.again)
        return 0
    modules = args.modules or list(configured)
    unknown = [m for m in modules if m not in configured]
    if unknown:
        parser.error(f"no tests configured for {unknown} in [tool.image-service.mutation.modules]")
    if args.again and (len(modules) != 1 or not (ROOT / "mutants" / f"{modules[0]}.meta").exists()):
        parser.error("--again takes the one module that the last run tested")
    totals = []
    with ExitStack() as stack:
        env = dict(os.environ)
        if any(configured[m].get("mongo") for m in modules) and not env.get("MONGO_TEST_URI"):
            sys.path.insert(0, str(ROOT))
            from tests import servers

            data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mutation-ferretdb-")))
            env["MONGO_TEST_URI"] = stack.enter_context(servers.ferretdb(servers.ferretdb_binary(), data))
        for module in modules:
            if not args.again:
                shutil.rmtree(ROOT / "mutants", ignore_errors=True)
            print(f"== {module}: {' '.join(configured[module]['tests'])}", flush=True)
            argv = [sys.executable, __file__, "--one", module, "--seed", str(args.seed)]
            argv += ["--again"] if args.again else []
            if args.sample:
                argv += ["--sample", str(args.sample)]
            (ROOT / "mutants").mkdir(exist_ok=True)
            log = ROOT / "mutants" / "run.log"  # mutmut's progress, spinner included
            started = time.monotonic()
            with log.open("w") as out:
                done = subprocess.run(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode:
                print(log.read_text()[-3000:])
                return done.returncode
            print(f"   ran in {time.monotonic() - started:.0f} s; mutmut's output: {log}", flush=True)
            names = None
            if args.sample or args.again or configured[module].get("functions"):
                functions = [module_prefix(module) + f for f in configured[module].get("functions", ["*"])]
                names = {k for k, v in read_meta(module).items() if v is not None and matches(k, functions)}
            totals.append((module, *report(module, names)))
    print("\nmodule                        detected / run   score")
    for module, detected, counted in totals:
        print(f"{module:30} {detected:>6} / {counted:<6} {100 * detected / max(counted, 1):6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
