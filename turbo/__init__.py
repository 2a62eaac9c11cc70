"""vllm-turbo: container-free NVFP4 serving with vLLM on NVIDIA DGX Spark (GB10, sm_121).

One module per stage of the flow (see docs in README.md): pins -> source -> patches -> build ->
stamp; model fetch; profiles -> serve -> verify / bench; cluster for two nodes.
"""

__version__ = "0.1.0"
