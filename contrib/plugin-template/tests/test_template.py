"""The template's own tests: what a third party would ship with its plugin."""

import pytest
import torch
from difframe import Framework
from difframe.attention import ReferenceBackend
from difframe_plugin_template import plugin


def test_registered_and_buildable():
    framework = Framework(plugins=[plugin])
    assert framework.attention_processors == ["query-chunks"]
    backend = framework.create("attention_processor", "chunked", chunk_size=3)
    assert backend.chunk_size == 3


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_matches_reference_attention(chunk_size):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 8, generator=generator) for _ in range(3))
    mask = torch.randn(2, 1, 10, 7, generator=generator)
    k, v = k[..., :7, :], v[..., :7, :]
    ours = Framework(plugins=[plugin]).create("attention_processor", "query-chunks", chunk_size=chunk_size)
    expected = ReferenceBackend().attend(q, k, v, mask=mask, scale=0.3)
    torch.testing.assert_close(ours.attend(q, k, v, mask=mask, scale=0.3), expected, atol=1e-5, rtol=1e-5)


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        Framework(plugins=[plugin]).create("attention_processor", "query-chunks", chunk_size=0)
