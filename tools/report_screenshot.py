"""Screenshot the drift report page after drifted traffic, for the README (docs/drift-report.png).

    python -m tools.report_screenshot                     # trains a 20-tree model in a temp dir (~3 s)
    python -m tools.report_screenshot --model model.joblib --width 390 --output /tmp/phone.png

Starts a monitor in this process on a free 127.0.0.1 port, serves it the demo's drift (held-out
stones drawn in proportion to their carat, labelled 25% dearer: evaluation/scenarios.py, as the
compose demo's simulator does), runs one check, and has Debian's headless Chromium screenshot
/drift/report. The page is cropped below its last line and stored with a 256-colour palette.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "drift-report.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def drifted_monitor(model: Path | None, tmp: Path, window: int, seed: int):
    """A running monitor that has scored one window of drifted traffic."""
    import joblib
    import numpy as np
    from prometheus_client import CollectorRegistry

    import train
    from evaluation.scenarios import SCENARIOS, heldout_rows
    from evaluation.simulate import Client
    from monitor import MonitorConfig, start_monitor
    from monitoring.diamonds import as_payload

    if model is None:
        model = tmp / "model.joblib"
        train.save_artifact(train.train(n_estimators=20, n_jobs=2), model)
    handle = start_monitor(MonitorConfig(model_path=model, port=0, check_interval=0, window=window,
                                         label_window=window // 2, db_path=None),
                           artifact=joblib.load(model), registry=CollectorRegistry())
    rng = np.random.default_rng(seed)
    rows = SCENARIOS["large_stones"].sample(heldout_rows(), window, rng)
    rows = SCENARIOS["price_up_25"].sample(rows, window, rng, replace=False)
    client = Client(handle.url)
    for start in range(0, window, 250):
        chunk = rows.iloc[start:start + 250]
        ids = client.predict(as_payload(chunk))
        client.feedback([(i, float(p)) for i, p in zip(ids, chunk["price"])])
    handle.monitor.check_drift()
    return handle


def screenshot(url: str, output: Path, width: int, height: int) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is missing: apt-get install chromium (or `make system-packages`)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={output}",
                                 f"--window-size={width},{height}", url], capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not output.is_file():
        sys.exit(f"chromium failed ({result.returncode}):\n{result.stderr[-2000:]}")


def crop_and_shrink(path: Path, background=(0xF4, 0xF4, 0xF2), margin: int = 16) -> tuple[int, int]:
    """Cut the empty page background below the content; store with a 256-colour palette."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    bottom = height
    pixels = rgb.load()
    for y in range(height - 1, 0, -1):
        if any(pixels[x, y] != background for x in range(0, width, 2)):
            bottom = min(height, y + margin)
            break
    rgb = rgb.crop((0, 0, width, bottom))
    rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return rgb.size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model artifact (default: train a small one in a temp dir)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--width", type=int, default=900, help="browser window width in CSS pixels")
    parser.add_argument("--height", type=int, default=6000, help="window height; the page is cropped below it")
    parser.add_argument("--window", type=int, default=1000, help="inputs in the drift window (labels: half)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="report-screenshot-") as tmp:
        handle = drifted_monitor(args.model, Path(tmp), args.window, args.seed)
        try:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            screenshot(handle.url + "/drift/report", args.output, args.width, args.height)
        finally:
            handle.stop()
    size = crop_and_shrink(args.output)
    print(f"wrote {args.output} ({size[0]}x{size[1]}, {args.output.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
