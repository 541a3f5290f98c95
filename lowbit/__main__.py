"""``python -m lowbit`` (and ``torchrun --nproc-per-node N -m lowbit qat ...``): the ``lowbit`` command line."""

from .cli import main

if __name__ == "__main__":
    main()
