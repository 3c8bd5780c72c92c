"""`python -m study.server`: the shared tracking server (study/record/server.py)."""
from study.record.server import main

if __name__ == "__main__":
    raise SystemExit(main())
