"""Loading the official MXNet weights without MXNet: a ``.params`` reader, the official name map and
``.safetensors`` conversion (``dcnviz convert``)."""
from dcnviz.convert.mxnet_params import ParamsFile, read_params
from dcnviz.convert.weights import read_weights, state_dict_from_params, write_safetensors

__all__ = ["ParamsFile", "read_params", "read_weights", "state_dict_from_params", "write_safetensors"]
