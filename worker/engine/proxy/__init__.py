"""Proxy construction: IPSVD (or SVD/random) compression of a target model, then alignment.

``build_proxy`` probes the target, factorises its linear layers and aligns the factors;
``save_proxy``/``load_proxy`` turn a proxy into safetensors + ``proxy.json`` and back.
"""

from worker.engine.proxy.artifacts import load_proxy, read_manifest, save_proxy
from worker.engine.proxy.build import Proxy, build_proxy
from worker.engine.proxy.config import ProxyConfig

__all__ = ["Proxy", "ProxyConfig", "build_proxy", "load_proxy", "read_manifest", "save_proxy"]
