"""certquant: certifiably robust mixed-precision quantization (ARQ).

Layers, lowest first: utils -> data, models -> train, smoothing, quant -> search -> report -> cli.
A lower layer never imports a higher one.
"""

__version__ = "0.1.0"
