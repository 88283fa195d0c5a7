"""Entry point of ``python -m kernels.bench``."""

from kernels.bench.cli import main

if __name__ == "__main__":
    main()
