"""Stage `fetch_model`: put the salient-object model `background.model` under models/rembg/."""
from __future__ import annotations

from fashionbg.background.params import read_background
from fashionbg.background.weights import ensure_model
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.params import load_params


@stage_main
def main() -> None:
    ensure_model(read_background(load_params()).model, paths.SOD_HOME)


if __name__ == "__main__":
    main()
