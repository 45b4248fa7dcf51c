"""dpe_core: the Deep Photo Enhancer in pure PyTorch plus image/metadata IO. Never imports prefect or dask."""

__version__ = "0.1.0"
