"""Tensor operations used by the models (pure PyTorch, any device)."""

from x3kd_core.ops.bev_pool import BevPoolGeometry, bev_pool, bev_pool_reference, precompute_bev_geometry

__all__ = ["BevPoolGeometry", "bev_pool", "bev_pool_reference", "precompute_bev_geometry"]
