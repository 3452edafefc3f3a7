"""ControlNet pipelines (SD, SDXL, Flux): the control branch follows SADA's step decisions.

The built-in plugin lives in :mod:`sadakit.plugins.controlnet.plugin`; the control-branch
descriptions it hands to the runtime are in :mod:`sadakit.plugins.controlnet.control`.
"""
