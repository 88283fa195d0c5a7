"""Entry point of ``python -m megavid.kernels.bench``."""

from megavid.kernels.bench.cli import main

if __name__ == "__main__":
    main()
