"""Stage `fetch_model`: put the salient-object model `background.model` under models/rembg/."""
from __future__ import annotations

from pathlib import Path

from .background.weights import MODELS, ensure_model
from .common.params import choice, load_params, section, stage_main

MODEL_HOME = Path("models/rembg")


@stage_main
def main() -> None:
    model = choice(section(load_params(), "background"), "background", "model", MODELS)
    ensure_model(model, MODEL_HOME)


if __name__ == "__main__":
    main()
