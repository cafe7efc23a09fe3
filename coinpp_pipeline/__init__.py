"""coinpp_pipeline: COIN++ neural compression for scientific arrays.

Public API::

    from coinpp_pipeline import ModelConfig, TrainConfig, meta_train, Model
    model = meta_train(train_array, ModelConfig(...), TrainConfig(...))
    sha = model.save("file:///models/era5.coinpp")      # or s3://..., memory://...
    blob = model.encode(array)                            # bytes
    back = Model.load(url, sha256=sha).decode(blob)       # np.ndarray, same shape/dtype
"""

from .config import ModelConfig, TrainConfig
from .errors import BitstreamError, CoinppError, ModelFileError, ModelMismatchError, NotFittedError
from .metalearning import meta_train
from .model import Model

__version__ = "0.1.0"

__all__ = [
    "BitstreamError",
    "CoinppError",
    "Model",
    "ModelConfig",
    "ModelFileError",
    "ModelMismatchError",
    "NotFittedError",
    "TrainConfig",
    "__version__",
    "meta_train",
]
