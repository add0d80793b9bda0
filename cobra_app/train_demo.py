"""`python -m cobra_app.train_demo`: the demo model's training command (see `cobra_app.demo.train`)."""

import sys

from cobra_app.demo.train import main

if __name__ == "__main__":
    sys.exit(main())
