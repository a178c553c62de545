"""Backbones: nn.Modules that map (B,3,H,W) images to (B,3,H,W) inpaintings, one module each.

A new backbone is one module here whose class carries `@checkpoint_class` (so checkpoints may rebuild it),
plus a conf/model option that names it as `net`.
"""
