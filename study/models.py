"""`python -m study.models`, the older path of `python -m study.measure` (a model's complexity);
the models themselves are study/train/models.py."""
from study.measure.__main__ import main

if __name__ == "__main__":
    main()
