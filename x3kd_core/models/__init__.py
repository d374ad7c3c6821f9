"""Models: backbones, view transform, BEV encoder, heads, student and teachers.

Submodules are imported explicitly (``from x3kd_core.models.heads import CenterHead``) so that
importing one model does not pull in the others.
"""
