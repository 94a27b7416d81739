"""The screenshots of docs/ui.md, from the current code, in headless Chromium.

    python docs/ui_screenshots.py                 # after `make demo`
    python docs/ui_screenshots.py --only neuroglancer

- neuroglancer: `lsdflow view` of the demo's volume (workspace/gala/demo/gala_test.zarr);
- prefect: a `prefect server` started here (its own home in a temp directory), one
  acquisition (a crop of gala_test) processed by `lsdflow run process-acquisition` against
  it, then its flow run page and the Artifacts page;
- mlflow: `mlflow ui` on the demo's registry (workspace/gala/mlflow.db), the champion's
  model version page.

Needs Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
LSDFLOW = [sys.executable, "-m", "lsdflow.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def started(argv: list[str], url: str, env: dict, log: Path, timeout: float = 180):
    """A server process, up once `url` answers; stopped (its whole group) afterwards."""
    with open(log, "w") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[:3]} did not start: {log.read_text()[-2000:]}") from None
                time.sleep(1)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def post(api: str, path: str, body: dict):
    request = urllib.request.Request(f"{api}/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def browser(size=(1400, 1000)):
    import selenium.webdriver

    from lsdflow.core.view.neuroglancer_view import browser as find_browser

    binary, _ = find_browser()
    options = selenium.webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(argument)
    return selenium.webdriver.Chrome(options=options)


def page(driver, url: str, out: Path, wait_for: str, settle_s: float = 3.0, timeout: float = 60) -> None:
    """Open `url`, wait until `wait_for` appears in the page's text, then save a PNG."""
    driver.get(url)
    deadline = time.monotonic() + timeout
    while wait_for not in driver.find_element("tag name", "body").text:
        if time.monotonic() > deadline:
            driver.save_screenshot(str(out.with_suffix(".failed.png")))
            raise TimeoutError(f"{url}: {wait_for!r} did not appear (what it showed: {out.with_suffix('.failed.png')})")
        time.sleep(0.5)
    time.sleep(settle_s)  # charts and fonts
    driver.save_screenshot(str(out))
    print(f"wrote {out}")


def neuroglancer(container: Path) -> None:
    from lsdflow.core.view.neuroglancer_view import open_view, screenshot

    out = IMAGES / "ui_neuroglancer.png"
    _, layers = screenshot(open_view(container), out, size=(1200, 800))
    print(f"wrote {out} (layers: {', '.join(layers)})")


def prefect(workdir: Path) -> None:
    from funlib.geometry import Coordinate, Roi

    from lsdflow.core.io.volumes import open_array, write_array
    from lsdflow.tasks.artifacts import volume_key

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": api}
    landing = workdir / "landing"
    raw = open_array(ROOT / "data/gala/gala_test.zarr", "volumes/raw")
    labels = open_array(ROOT / "data/gala/gala_test.zarr", "volumes/labels/neuron_ids")
    roi = Roi(raw.roi.offset, Coordinate(300, 600, 600))
    container = landing / "acquisition_0042.zarr"
    write_array(container, "volumes/raw", roi, raw.voxel_size, raw.to_ndarray(roi))
    write_array(container, "volumes/labels/neuron_ids", roi, raw.voxel_size, labels.to_ndarray(roi))
    server = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with started([str(Path(sys.executable).parent / server[0]), *server[1:]], f"{api}/health", env,
                 workdir / "server.log"):
        done = subprocess.run([*LSDFLOW, "run", "process-acquisition", str(container), "--workspace",
                               str(workdir / "workspace")], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        run = post(api, "flow_runs/filter", {"limit": 1})[0]
        driver = browser()
        try:
            page(driver, f"http://127.0.0.1:{port}/runs/flow-run/{run['id']}", IMAGES / "ui_prefect_flow_run.png",
                 run["name"])
            page(driver, f"http://127.0.0.1:{port}/artifacts", IMAGES / "ui_prefect_artifacts.png",
                 "acquisition")
            for kind, out, text in (("acquisition", "ui_prefect_acquisition_summary.png", "view in neuroglancer"),
                                    ("evaluation", "ui_prefect_evaluation.png", "voi vs threshold")):
                artifact = post(api, "artifacts/filter", {"artifacts": {"key": {"any_": [volume_key(kind, container)]}},
                                                          "sort": "CREATED_DESC", "limit": 1})[0]
                page(driver, f"http://127.0.0.1:{port}/artifacts/artifact/{artifact['id']}", IMAGES / out, text)
        finally:
            driver.quit()


def mlflow(workspace: Path, workdir: Path) -> None:
    store = workspace / "mlflow.db"
    if not store.is_file():
        raise FileNotFoundError(f"{store}: run `make demo` first")
    port = free_port()
    argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}",
            "--host", "127.0.0.1", "--port", str(port)]
    with started(argv, f"http://127.0.0.1:{port}/health", dict(os.environ), workdir / "mlflow.log"):
        driver = browser()
        try:
            page(driver, f"http://127.0.0.1:{port}/#/models/mtlsd-gala/versions/1",
                 IMAGES / "ui_mlflow_model_version.png", "champion")
        finally:
            driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--container", type=Path, default=ROOT / "workspace/gala/demo/gala_test.zarr")
    parser.add_argument("--workspace", type=Path, default=ROOT / "workspace/gala")
    parser.add_argument("--only", choices=["neuroglancer", "prefect", "mlflow"], action="append")
    args = parser.parse_args()
    wanted = args.only or ["neuroglancer", "prefect", "mlflow"]
    IMAGES.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lsdflow-ui-"))
    try:
        if "neuroglancer" in wanted:
            neuroglancer(args.container)
        if "prefect" in wanted:
            prefect(workdir)
        if "mlflow" in wanted:
            mlflow(args.workspace, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
