"""One tiny folder per family for the whole session: building them costs seconds each on a shared CPU."""

import pytest

from ..models.family_folders import make_flux_folder, make_pixart_folder, make_sd3_folder, make_sdxl_folder
from ..models.tiny_folders import make_sd_folder


def make_sd_flow_folder(root):
    """A pixel-space Stable Diffusion layout whose scheduler is FlowMatchEulerDiscrete (shift 3): a flow UNet."""
    return make_sd_folder(root, vae=False, flow_shift=3.0)


BUILDERS = {
    "sdxl": make_sdxl_folder,
    "sd3": make_sd3_folder,
    "pixart": make_pixart_folder,
    "flux": make_flux_folder,
    "sd-flow": make_sd_flow_folder,
}


@pytest.fixture(scope="session")
def family_folder(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            built[name] = BUILDERS[name](tmp_path_factory.mktemp(name) / name)
        return built[name]

    return get
