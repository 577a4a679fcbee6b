"""One tiny folder per family for the whole session: building them costs seconds each on a shared CPU."""

import pytest

from ..models.family_folders import make_flux_folder, make_pixart_folder, make_sd3_folder, make_sdxl_folder

BUILDERS = {"sdxl": make_sdxl_folder, "sd3": make_sd3_folder, "pixart": make_pixart_folder, "flux": make_flux_folder}


@pytest.fixture(scope="session")
def family_folder(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            built[name] = BUILDERS[name](tmp_path_factory.mktemp(name) / name)
        return built[name]

    return get
