"""``python -m lowbit.cli`` — same as the ``lowbit`` console script."""

from . import main

if __name__ == "__main__":
    main()
