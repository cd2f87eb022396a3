"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture(scope="session")
def vgg16_trunk_weights(tmp_path_factory):
    """A torchvision vgg16 state dict with random weights (the real file cannot be downloaded here), holding only the
    conv trunk (`features.*`): all that LPIPS reads, 58 MB instead of the whole model's 528 MB. Written once."""
    import torchvision

    path = tmp_path_factory.mktemp("vgg16") / "vgg16.pth"
    with torch.random.fork_rng():  # leaves the global RNG as the test that asked for it had it
        torch.manual_seed(0)
        trunk = torchvision.models.vgg16().features
    torch.save({f"features.{k}": v for k, v in trunk.state_dict().items()}, path)
    return path
