"""fashionbg: does removing the background of fashion photos help the networks that classify and
segment them? The library behind the DVC stages (stages/*.py).

Imported before any of its modules, so it is where the libraries they load are told to write
nothing outside the project: matplotlib would build its font cache in ~/.cache/matplotlib and
ONNX Runtime (rembg's engine) would open a telemetry database under
~/.cache/Microsoft/DeveloperTools on import. Stages run from the project root, so the font cache
goes to the project's ignored .cache/ folder.
"""
import os

os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.getcwd(), ".cache", "matplotlib"))
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
