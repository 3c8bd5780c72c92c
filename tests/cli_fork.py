"""Many runs of `python -m study.run ARGS` from one interpreter: the study's modules are imported
once, then each run is a fork that calls the same main with its own arguments, stdout and
stderr, and ends with the exit status a fresh process would (a SystemExit message printed,
status 1). Each fork saves the ~9 s of imports a process start costs (tests/test_bad_input.py
runs twenty such cases). The runs are read as JSON from stdin ([[arg, ...], ...]) and answered
as JSON on stdout ([{"returncode", "stdout", "stderr"}, ...]).

    python -m tests.cli_fork < cases.json
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def _child(args: list[str]) -> int:
    from study import run as entry

    sys.argv = ["study.run", *args]
    try:
        entry.main()
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def run(args: list[str]) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            code = _child(args)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return {"returncode": os.waitstatus_to_exitcode(status), "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


def main() -> None:
    import study.run  # noqa: F401  (imported once, before the forks)

    cases = json.loads(sys.stdin.read())
    results = [run(args) for args in cases]
    sys.stdout.write("\n" + json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
