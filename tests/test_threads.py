"""One intra-op thread for a one-shot classify of a few images on a small network; torch's default otherwise."""

from types import SimpleNamespace

import pytest
import torch

from diffcls_fast.threads import FEW_IMAGES, SMALL_NETWORK, one_shot_threads, restore_for_large_network


@pytest.fixture(autouse=True)
def _keep_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _bundle(params: int, device: str = "cpu"):
    net = torch.nn.Linear(params // 1000, 1000, bias=False, device="meta")  # sized, never allocated
    return SimpleNamespace(network=net, device=torch.device(device))


def test_a_few_images_on_a_small_network_run_on_one_thread():
    torch.set_num_threads(2)
    before = one_shot_threads(1)
    assert before == 2 and torch.get_num_threads() == 1
    restore_for_large_network(_bundle(1_400_000), before)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("bundle", [_bundle(SMALL_NETWORK), _bundle(1_000_000, "meta")], ids=["large", "off-cpu"])
def test_a_large_network_or_another_device_gets_the_threads_back(bundle):
    torch.set_num_threads(2)
    before = one_shot_threads(FEW_IMAGES)
    restore_for_large_network(bundle, before)
    assert torch.get_num_threads() == 2


def test_many_images_or_the_users_setting_keep_the_threads(monkeypatch):
    torch.set_num_threads(2)
    assert one_shot_threads(FEW_IMAGES + 1) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert one_shot_threads(1) is None
    assert torch.get_num_threads() == 2
