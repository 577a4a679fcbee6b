"""A component's config.json, read like the libraries' config objects (``cfg.in_channels`` and ``cfg.get(...)``)."""

from __future__ import annotations


class Config(dict):
    """A dict whose keys also read as attributes, as the code shared with the diffusers path expects
    (``unet.config.in_channels``, ``unet_cfg.get("class_embed_type")``)."""

    def __getattr__(self, key: str):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None
