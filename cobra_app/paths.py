"""Where the bundled assets live (the repository's `assets/` folder)."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
DEMO_MODEL_DIR = ASSETS_DIR / "demo-model"  # the offline demo model, served when the real one can't be fetched
EXAMPLES_DIR = ASSETS_DIR / "examples"  # example scenes with suggested questions
